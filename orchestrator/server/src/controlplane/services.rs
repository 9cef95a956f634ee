//! Service operations: apply, create, replace, scale, delete, rollout undo.

use super::{ControlPlane, ControlPlaneError, Result};
use crate::objects::{self, Batch, Versioned};
use std::collections::BTreeMap;
use tugboat_api::model::{
    now_ms, service_key, Instance, ObjectKind, Rollout, Service, INSTANCES, SERVICES,
};
use tugboat_api::spec::validate::ingress_clashes;
use tugboat_api::spec::{validate_services, ServiceSpec, SpecFile};
use tugboat_api::wire::ApplyOutcome;

impl ControlPlane {
    async fn known_services(&self) -> Result<BTreeMap<String, Versioned<Service>>> {
        let (items, _) = objects::list::<Service>(self.store(), SERVICES).await?;
        Ok(items
            .into_iter()
            .map(|v| (v.object.name.clone(), v))
            .collect())
    }

    /// Gives a new service its virtual address: the lowest free one, counting the known
    /// services and those created in the same transaction (`also`). The service controller
    /// repairs the rare clash of two concurrent creations, and gives one to a service
    /// created while the range was full once an address is free.
    fn give_address(
        &self,
        known: &BTreeMap<String, Versioned<Service>>,
        also: &[Service],
        service: &mut Service,
    ) {
        let mut all: Vec<Service> = known
            .values()
            .map(|v| v.object.clone())
            .chain(also.iter().cloned())
            .collect();
        all.push(service.clone());
        service.address = crate::controllers::addresses::assign(self.service_range, &all)
            .into_iter()
            .find(|(name, _)| *name == service.name)
            .map(|(_, a)| a);
    }

    async fn validate(
        &self,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Result<BTreeMap<String, Versioned<Service>>> {
        let known = self.known_services().await?;
        validate_services(services, &|name| known.contains_key(name))
            .map_err(ControlPlaneError::Invalid)?;
        // Ports against the services already stored (those in the request were checked
        // against each other above); a stored service the request replaces is not counted.
        let mut all: BTreeMap<String, ServiceSpec> = known
            .iter()
            .map(|(name, v)| (name.clone(), v.object.spec.clone()))
            .collect();
        all.extend(services.iter().map(|(n, s)| (n.clone(), s.clone())));
        let applied = |name: &str| services.contains_key(name);
        let mut clashes = ingress_clashes(&all, &applied, &|name| !applied(name));
        clashes.extend(ingress_clashes(&all, &|name| !applied(name), &applied));
        if !clashes.is_empty() {
            return Err(ControlPlaneError::Invalid(clashes));
        }
        Ok(known)
    }

    /// Create or update every service of a spec file in one transaction: all or nothing.
    pub async fn apply(&self, file: SpecFile) -> Result<ApplyOutcome> {
        let known = self.validate(&file.services).await?;
        let now = now_ms();
        let mut batch = Batch::default();
        let volumes = self.apply_volumes(&mut batch, &file.volumes, now).await?;
        let mut outcome = BTreeMap::new();
        let mut created = vec![];
        for (name, spec) in file.services {
            let (service, revision, what) = match known.get(&name) {
                None => {
                    let mut service = Service::new(&name, spec, now);
                    self.give_address(&known, &created, &mut service);
                    created.push(service.clone());
                    (service, 0, "created")
                }
                Some(existing) if existing.object.spec == spec => {
                    outcome.insert(name, "unchanged".into());
                    continue;
                }
                Some(existing) => {
                    let mut service = existing.object.clone();
                    service.replace_spec(spec, now);
                    (service, existing.revision, "updated")
                }
            };
            self.event(
                &mut batch,
                ObjectKind::Service,
                &name,
                what,
                format!("service {what} (generation {})", service.generation),
            );
            batch.put_if(service_key(&name), revision, &service);
            outcome.insert(name, what.into());
        }
        let revision = match batch.commit(self.store()).await? {
            Some(r) => r,
            None => self.store.current_revision().await?,
        };
        Ok(ApplyOutcome {
            revision,
            services: outcome,
            volumes,
        })
    }

    pub async fn create_service(&self, name: &str, spec: ServiceSpec) -> Result<Service> {
        let services = BTreeMap::from([(name.to_string(), spec.clone())]);
        let known = self.validate(&services).await?;
        if known.contains_key(name) {
            return Err(ControlPlaneError::AlreadyExists {
                kind: "service",
                name: name.into(),
            });
        }
        let mut service = Service::new(name, spec, now_ms());
        self.give_address(&known, &[], &mut service);
        let mut batch = Batch::default();
        batch.put_if(service_key(name), 0, &service);
        self.event(
            &mut batch,
            ObjectKind::Service,
            name,
            "created",
            "service created (generation 1)".into(),
        );
        batch.commit(self.store()).await?;
        Ok(service)
    }

    /// Replace a service's spec (creating it if it does not exist).
    pub async fn replace_service(&self, name: &str, spec: ServiceSpec) -> Result<Service> {
        let services = BTreeMap::from([(name.to_string(), spec.clone())]);
        let known = self.validate(&services).await?;
        let (service, revision) = match known.get(name) {
            Some(existing) => {
                let mut service = existing.object.clone();
                service.replace_spec(spec, now_ms());
                (service, existing.revision)
            }
            None => {
                let mut service = Service::new(name, spec, now_ms());
                self.give_address(&known, &[], &mut service);
                (service, 0)
            }
        };
        let mut batch = Batch::default();
        batch.put_if(service_key(name), revision, &service);
        self.event(
            &mut batch,
            ObjectKind::Service,
            name,
            "updated",
            format!("spec replaced (generation {})", service.generation),
        );
        batch.commit(self.store()).await?;
        Ok(service)
    }

    pub async fn get_service(&self, name: &str) -> Result<Versioned<Service>> {
        objects::get::<Service>(self.store(), &service_key(name))
            .await?
            .ok_or_else(|| ControlPlaneError::NotFound {
                kind: "service",
                name: name.into(),
            })
    }

    /// Change a service with `change`, compare-and-swap, retrying a few times on conflict.
    async fn update_service(
        &self,
        writer: super::Writer,
        name: &str,
        reason: &str,
        change: impl Fn(&mut Service) -> Result<String>,
    ) -> Result<Service> {
        for _ in 0..5 {
            let current = self.get_service(name).await?;
            let mut service = current.object;
            let message = change(&mut service)?;
            let mut batch = Batch::default();
            batch.put_if(service_key(name), current.revision, &service);
            self.event(&mut batch, ObjectKind::Service, name, reason, message);
            match self.commit_as(writer, batch).await {
                Ok(_) => return Ok(service),
                Err(crate::store::StoreError::NotLeader { .. }) => {
                    return Err(ControlPlaneError::Conflict(
                        "this server is no longer the leader".into(),
                    ))
                }
                Err(crate::store::StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ControlPlaneError::Conflict(format!(
            "service `{name}` kept changing under this request; try again"
        )))
    }

    /// The autoscaler's change of replicas (manual scaling of an autoscaled service is
    /// refused).
    pub(crate) async fn autoscale_to(
        &self,
        name: &str,
        replicas: u32,
        reason: &str,
    ) -> Result<Service> {
        let reason = reason.to_string();
        self.update_service(
            super::Writer::Controller,
            name,
            "autoscaled",
            move |service| {
                service.spec.replicas = replicas;
                service.generation += 1;
                Ok(reason.clone())
            },
        )
        .await
    }

    pub async fn scale_service(&self, name: &str, replicas: u32) -> Result<Service> {
        if replicas > tugboat_api::spec::validate::MAX_REPLICAS {
            return Err(ControlPlaneError::BadRequest(format!(
                "{replicas} replicas is too many: allowed 0 to {}",
                tugboat_api::spec::validate::MAX_REPLICAS
            )));
        }
        self.update_service(super::Writer::Api, name, "scaled", |service| {
            if let Some(a) = &service.spec.autoscale {
                return Err(ControlPlaneError::Conflict(format!(
                    "service `{name}` is autoscaled between {} and {} replicas: change autoscale.min and max in its spec instead",
                    a.min, a.max
                )));
            }
            let from = service.spec.replicas;
            service.spec.replicas = replicas;
            service.generation += 1;
            Ok(format!("replicas {from} -> {replicas}"))
        })
        .await
    }

    /// Roll back to the last good template before the current one, as a new rollout (a
    /// template whose rollout failed is passed over, so an undo after an automatic rollback
    /// does not re-deploy the failed one).
    pub async fn undo_rollout(&self, name: &str) -> Result<Service> {
        self.update_service(super::Writer::Api, name, "rollout-undo", |service| {
            let previous = service.previous_spec().ok_or_else(|| {
                ControlPlaneError::Conflict(format!(
                    "service `{name}` has no earlier good template to go back to (templates whose rollout failed are passed over; `tugboat rollout history {name}` lists them)"
                ))
            })?;
            service.replace_spec(previous, now_ms());
            Ok(format!(
                "undo: back to template {}",
                service.rollout.template_hash
            ))
        })
        .await
    }

    pub async fn rollout_status(&self, name: &str) -> Result<Rollout> {
        Ok(self.get_service(name).await?.object.rollout)
    }

    /// Delete a service and its instances (agents stop them when they see the deletes).
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        self.get_service(name).await?;
        let prefix = format!("{INSTANCES}{name}/");
        let (instances, _) = objects::list::<Instance>(self.store(), &prefix).await?;
        let mut batch = Batch::default();
        batch.delete(service_key(name));
        for instance in instances {
            batch.delete(instance.object.key());
        }
        self.event(
            &mut batch,
            ObjectKind::Service,
            name,
            "deleted",
            "service and its instances deleted".into(),
        );
        batch.commit(self.store()).await?;
        Ok(())
    }
}
