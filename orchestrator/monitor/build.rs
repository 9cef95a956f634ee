include!("../../build-support/relr.rs");

fn main() {
    link_with_relr("tugboat-monitor");
}
