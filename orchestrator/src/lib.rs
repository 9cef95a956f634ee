//! tugboat: the orchestrator.
