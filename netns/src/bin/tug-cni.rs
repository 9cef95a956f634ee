//! `tug-cni`: a CNI 1.0 plugin (ADD, DEL, CHECK, VERSION) over tug-netns. Parses the
//! environment and stdin, runs one library call, prints the result or a CNI error as JSON.

use std::io::Read;

use tug_netns::cni::{self, CniError};

fn main() {
    let env = std::env::vars().collect();
    let mut stdin = Vec::new();
    let result = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError {
            cni_version: "1.0.0".into(),
            code: 5,
            msg: "cannot read stdin".into(),
            details: e.to_string(),
        })
        .and_then(|_| cni::parse(&env, &stdin))
        .and_then(|inv| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(cni::execute(&inv))
        });
    match result {
        Ok(Some(out)) => println!("{out}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", serde_json::to_string(&e).expect("error serialises"));
            std::process::exit(1);
        }
    }
}
