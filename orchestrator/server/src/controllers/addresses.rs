//! Virtual addresses of services: one per service, the same on every node, from the
//! cluster's service range. A pure function; the controller loop writes what it decides.

use ipnetwork::Ipv4Network;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use tugboat_api::model::Service;

/// The services that need an address, and the address each gets: a service keeps a usable
/// address (in the range, not its network or broadcast address, not held by an older
/// service); the others get the lowest free one, oldest service first. Services beyond a
/// full range get none (and are not listed) until an address is freed.
pub fn assign(range: Ipv4Network, services: &[Service]) -> Vec<(String, Ipv4Addr)> {
    let mut order: Vec<&Service> = services.iter().collect();
    order.sort_by(|a, b| (a.created_at_ms, &a.name).cmp(&(b.created_at_ms, &b.name)));
    let usable = |a: Ipv4Addr| range.contains(a) && a != range.network() && a != range.broadcast();
    let mut taken = HashSet::new();
    let mut needing = vec![];
    for s in &order {
        match s.address {
            Some(a) if usable(a) && taken.insert(a) => {}
            _ => needing.push(s.name.clone()),
        }
    }
    let mut free = range.iter().filter(|a| usable(*a) && !taken.contains(a));
    needing
        .into_iter()
        .map_while(|name| free.next().map(|a| (name, a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboat_api::spec::ServiceSpec;

    fn service(name: &str, created: u64, address: Option<&str>) -> Service {
        let mut s = Service::new(name, ServiceSpec::new("x"), created);
        s.address = address.map(|a| a.parse().unwrap());
        s
    }

    fn ip(a: &str) -> Ipv4Addr {
        a.parse().unwrap()
    }

    #[test]
    fn new_services_get_the_lowest_free_addresses_oldest_first() {
        let range = "10.89.0.0/24".parse().unwrap();
        let services = [
            service("web", 3, None),
            service("db", 1, Some("10.89.0.1")),
            service("cache", 2, None),
        ];
        assert_eq!(
            assign(range, &services),
            [
                ("cache".to_string(), ip("10.89.0.2")),
                ("web".to_string(), ip("10.89.0.3"))
            ]
        );
        // Once given, nothing changes.
        let given = [
            service("web", 3, Some("10.89.0.3")),
            service("db", 1, Some("10.89.0.1")),
            service("cache", 2, Some("10.89.0.2")),
        ];
        assert!(assign(range, &given).is_empty());
    }

    #[test]
    fn a_duplicate_or_out_of_range_address_is_replaced_and_a_full_range_gives_none() {
        let range = "10.89.0.0/30".parse().unwrap(); // .1 and .2 usable
        let services = [
            service("old", 1, Some("10.89.0.2")),
            service("copy", 2, Some("10.89.0.2")),
            service("outside", 3, Some("10.99.0.1")),
        ];
        assert_eq!(
            assign(range, &services),
            [("copy".to_string(), ip("10.89.0.1"))]
        );
    }
}
