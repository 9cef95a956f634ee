//! Who is calling, and whether they may (docs/security.md): the cluster's admin token,
//! scoped tokens, and nodes by their certificates, which do only their node's work.

use super::{ApiError, ApiRequest, ApiState, RouteId};
use axum::http::{HeaderMap, Method, StatusCode};
use tugboat_api::tls::PeerCert;
use tugboat_api::wire::TokenScope;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Read,
    Join,
    Node(String),
}

fn unauthorized(message: String) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

pub fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Routes anyone may call: liveness, and the CA certificate (public; a joining node checks
/// it against the hash it was given).
pub fn open_route(id: RouteId) -> bool {
    matches!(id, RouteId::Healthz | RouteId::ClusterCa)
}

/// The caller, from the connection's verified certificate or the request's bearer token.
pub async fn identify(
    state: &ApiState,
    headers: &HeaderMap,
    peer: Option<&PeerCert>,
) -> Result<Caller, ApiError> {
    let Some(admin) = &state.token else {
        return Ok(Caller::Admin);
    };
    if let Some(PeerCert(cert)) = peer {
        let name = &cert.common_name;
        let record = state.control.node_cert(name).await?;
        return match record {
            Some(r) if r.serials.contains(&cert.serial) => Ok(Caller::Node(name.clone())),
            _ => Err(unauthorized(format!(
                "the certificate of node {name} is no longer valid (the node was deleted, or its certificate replaced): join it again with a new join token"
            ))),
        };
    }
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err(unauthorized(
            "missing bearer token: send `Authorization: Bearer <token>`; the admin token is in <data-dir>/token \
             (tugboat reads it with --token, TUGBOAT_TOKEN or --data-dir); nodes use their certificates"
                .into(),
        ));
    };
    if tugboat_api::same_secret(given.as_bytes(), admin.as_bytes()) {
        return Ok(Caller::Admin);
    }
    match state.control.token_scope(given).await? {
        Some(TokenScope::Admin) => Ok(Caller::Admin),
        Some(TokenScope::Read) => Ok(Caller::Read),
        Some(TokenScope::Join) => Ok(Caller::Join),
        None => Err(unauthorized(
            "wrong, revoked or expired bearer token: the admin token is in <data-dir>/token; the others are listed by `tugboat token ls`".into(),
        )),
    }
}

/// Whether `caller` may make `request`.
pub async fn permit(
    state: &ApiState,
    caller: &Caller,
    method: &Method,
    request: &ApiRequest,
) -> Result<(), ApiError> {
    match caller {
        Caller::Admin => {
            // Not even the admin registers a host under the name of a node that joined
            // with a certificate: that would take its instances.
            if let ApiRequest::RegisterNode(registration) = request {
                if state.control.node_cert(&registration.name).await?.is_some() {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "conflict",
                        format!(
                            "node {} joined with a certificate: only it registers under that name",
                            registration.name
                        ),
                    ));
                }
            }
            Ok(())
        }
        // A tunnel carries requests for a node's API: only the node opens it.
        Caller::Read | Caller::Join
            if matches!(
                request,
                ApiRequest::NodeTunnel { .. } | ApiRequest::NodeTunnelConnection { .. }
            ) =>
        {
            Err(forbidden(
                "only a node opens its tunnel (with its certificate)".into(),
            ))
        }
        // A read token reads no secret's values.
        Caller::Read if matches!(request, ApiRequest::InstanceSecrets { .. }) => Err(forbidden(
            "a read-only token reads no secret: only the node an instance runs on does".into(),
        )),
        // Nor a volume's files, which may hold as much.
        Caller::Read if matches!(request, ApiRequest::SnapshotVolume { .. }) => Err(forbidden(
            "a read-only token reads no volume's contents: snapshots need an admin token".into(),
        )),
        Caller::Read if method == Method::GET => Ok(()),
        Caller::Read => Err(forbidden(
            "this token is read-only: it lists, describes and watches".into(),
        )),
        Caller::Join if matches!(request, ApiRequest::Join(_)) => Ok(()),
        Caller::Join => Err(forbidden(
            "a join token only joins nodes (POST /v1/join)".into(),
        )),
        Caller::Node(node) => permit_node(state, node, request).await,
    }
}

/// A node reads the cluster's services, instances and nodes (it routes to them), and
/// writes only what is its own: its registration, heartbeats, certificate, and the status
/// of the instances placed on it.
async fn permit_node(state: &ApiState, node: &str, request: &ApiRequest) -> Result<(), ApiError> {
    let own = |name: &str| {
        if name == node {
            Ok(())
        } else {
            Err(forbidden(format!(
                "node {node} acts only for itself, not for node {name}"
            )))
        }
    };
    match request {
        ApiRequest::RegisterNode(registration) => own(&registration.name),
        ApiRequest::Heartbeat { name, .. }
        | ApiRequest::RenewNodeCertificate { name, .. }
        | ApiRequest::NodeTunnel { name }
        | ApiRequest::NodeTunnelConnection { name, .. }
        | ApiRequest::ReportVolumeUsage { name, .. }
        | ApiRequest::GetNode { name } => own(name),
        ApiRequest::InstanceSecrets { id } => {
            let instance = state.control.get_instance(id).await?.object;
            match instance.node.as_deref() {
                Some(n) if n == node => Ok(()),
                _ => Err(forbidden(format!(
                    "instance {id} is not placed on node {node}: its secrets go to its own node only"
                ))),
            }
        }
        ApiRequest::ReportInstanceStatus { id, report } => {
            own(&report.node)?;
            let instance = state.control.get_instance(id).await?.object;
            match instance.node.as_deref() {
                Some(n) if n == node => Ok(()),
                _ => Err(forbidden(format!(
                    "instance {id} is not placed on node {node}"
                ))),
            }
        }
        ApiRequest::ListNodes
        | ApiRequest::ListServices
        | ApiRequest::GetService { .. }
        | ApiRequest::ListInstances { .. }
        | ApiRequest::GetInstance { .. }
        | ApiRequest::ListVolumes
        | ApiRequest::GetVolume { .. }
        | ApiRequest::Watch { .. }
        | ApiRequest::DescribeCluster
        | ApiRequest::ListServers
        | ApiRequest::Healthz
        | ApiRequest::ClusterCa => Ok(()),
        _ => Err(forbidden(format!(
            "node {node}'s certificate does only the node's work; use a token for this"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_liveness_and_the_ca_are_open() {
        assert!(open_route(RouteId::Healthz));
        assert!(open_route(RouteId::ClusterCa));
        assert!(!open_route(RouteId::Join));
        assert!(!open_route(RouteId::ListInstances));
    }
}
