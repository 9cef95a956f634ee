//! Every route of the HTTP API, in one table: the router is built from it, and a test checks
//! it against docs/api.yaml.

use axum::http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    Healthz,
    Apply,
    ListServices,
    CreateService,
    GetService,
    ReplaceService,
    ScaleService,
    DeleteService,
    RolloutStatus,
    RolloutUndo,
    ListInstances,
    GetInstance,
    DeleteInstance,
    InstanceLogs,
    InstanceExec,
    ReportInstanceStatus,
    ListNodes,
    RegisterNode,
    GetNode,
    DeleteNode,
    Heartbeat,
    CordonNode,
    UncordonNode,
    DrainNode,
    ListEvents,
    Watch,
    DescribeCluster,
    ListServers,
    ClusterCa,
    Join,
    RenewNodeCertificate,
    ListTokens,
    CreateToken,
    RevokeToken,
    ListSecrets,
    PutSecret,
    DeleteSecret,
    InstanceSecrets,
    ListVolumes,
    CreateVolume,
    GetVolume,
    DeleteVolume,
    ReportVolumeUsage,
    Metrics,
    NodeMetrics,
    NodeTunnel,
    NodeTunnelConnection,
}

pub struct Route {
    pub method: Method,
    /// axum path syntax: `{name}` is a parameter (the same syntax as OpenAPI).
    pub path: &'static str,
    pub id: RouteId,
}

macro_rules! routes {
    ($(($method:ident, $path:literal, $id:ident)),* $(,)?) => {
        /// The API's routes.
        pub fn routes() -> Vec<Route> {
            vec![$(Route { method: Method::$method, path: $path, id: RouteId::$id }),*]
        }
    };
}

routes![
    (GET, "/v1/healthz", Healthz),
    (POST, "/v1/apply", Apply),
    (GET, "/v1/services", ListServices),
    (POST, "/v1/services", CreateService),
    (GET, "/v1/services/{name}", GetService),
    (PUT, "/v1/services/{name}", ReplaceService),
    (PATCH, "/v1/services/{name}", ScaleService),
    (DELETE, "/v1/services/{name}", DeleteService),
    (GET, "/v1/services/{name}/rollout", RolloutStatus),
    (POST, "/v1/services/{name}/rollout/undo", RolloutUndo),
    (GET, "/v1/instances", ListInstances),
    (GET, "/v1/instances/{id}", GetInstance),
    (DELETE, "/v1/instances/{id}", DeleteInstance),
    (PUT, "/v1/instances/{id}/status", ReportInstanceStatus),
    (GET, "/v1/instances/{id}/logs", InstanceLogs),
    (POST, "/v1/instances/{id}/exec", InstanceExec),
    (GET, "/v1/nodes", ListNodes),
    (POST, "/v1/nodes", RegisterNode),
    (GET, "/v1/nodes/{name}", GetNode),
    (DELETE, "/v1/nodes/{name}", DeleteNode),
    (POST, "/v1/nodes/{name}/heartbeat", Heartbeat),
    (POST, "/v1/nodes/{name}/cordon", CordonNode),
    (POST, "/v1/nodes/{name}/uncordon", UncordonNode),
    (POST, "/v1/nodes/{name}/drain", DrainNode),
    (GET, "/v1/events", ListEvents),
    (GET, "/v1/watch/{kind}", Watch),
    (GET, "/v1/cluster", DescribeCluster),
    (GET, "/v1/servers", ListServers),
    (GET, "/v1/cluster/ca", ClusterCa),
    (POST, "/v1/join", Join),
    (POST, "/v1/nodes/{name}/certificate", RenewNodeCertificate),
    (GET, "/v1/tokens", ListTokens),
    (POST, "/v1/tokens", CreateToken),
    (DELETE, "/v1/tokens/{id}", RevokeToken),
    (GET, "/v1/secrets", ListSecrets),
    (POST, "/v1/secrets", PutSecret),
    (DELETE, "/v1/secrets/{name}", DeleteSecret),
    (GET, "/v1/instances/{id}/secrets", InstanceSecrets),
    (GET, "/v1/volumes", ListVolumes),
    (POST, "/v1/volumes", CreateVolume),
    (GET, "/v1/volumes/{name}", GetVolume),
    (DELETE, "/v1/volumes/{name}", DeleteVolume),
    (PUT, "/v1/nodes/{name}/volumes", ReportVolumeUsage),
    (GET, "/metrics", Metrics),
    (GET, "/v1/nodes/{name}/metrics", NodeMetrics),
    (GET, "/v1/nodes/{name}/tunnel", NodeTunnel),
    (POST, "/v1/nodes/{name}/tunnel/{id}", NodeTunnelConnection),
];
