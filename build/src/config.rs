//! The run defaults of an image (the `config` object of its image config: Env, Entrypoint,
//! Cmd, WorkingDir, User, ExposedPorts, Labels, Volumes, StopSignal, Shell) as the
//! instructions change them; read from a base image and written back into the config
//! document, keeping the fields tugboat build does not manage.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

/// The run defaults of the image being built (the `config` object of its image config).
#[derive(Debug, Clone, Default)]
pub struct RunDefaults {
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: String,
    pub user: String,
    pub exposed: BTreeSet<String>,
    pub labels: BTreeMap<String, String>,
    pub volumes: BTreeSet<String>,
    pub stop_signal: Option<String>,
    pub shell: Vec<String>,
}

impl RunDefaults {
    pub fn from_config(c: &Value) -> RunDefaults {
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
        };
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        RunDefaults {
            env: strings(&c["Env"])
                .unwrap_or_default()
                .iter()
                .map(|e| match e.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (e.clone(), String::new()),
                })
                .collect(),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            workdir: c["WorkingDir"].as_str().unwrap_or("").to_string(),
            user: c["User"].as_str().unwrap_or("").to_string(),
            exposed: keys(&c["ExposedPorts"]),
            labels: c["Labels"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            volumes: keys(&c["Volumes"]),
            stop_signal: c["StopSignal"].as_str().map(str::to_string),
            shell: strings(&c["Shell"]).unwrap_or_default(),
        }
    }

    /// Write these defaults into a `config` object, keeping its other fields.
    pub fn write_into(&self, c: &mut serde_json::Map<String, Value>) {
        let set = |c: &mut serde_json::Map<String, Value>, k: &str, v: Option<Value>| match v {
            Some(v) => {
                c.insert(k.to_string(), v);
            }
            None => {
                c.remove(k);
            }
        };
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        set(c, "Env", (!env.is_empty()).then(|| json!(env)));
        set(c, "Entrypoint", self.entrypoint.as_ref().map(|e| json!(e)));
        set(c, "Cmd", self.cmd.as_ref().map(|e| json!(e)));
        set(
            c,
            "WorkingDir",
            (!self.workdir.is_empty()).then(|| json!(self.workdir)),
        );
        set(c, "User", (!self.user.is_empty()).then(|| json!(self.user)));
        let obj = |s: &BTreeSet<String>| {
            (!s.is_empty())
                .then(|| Value::Object(s.iter().map(|k| (k.clone(), json!({}))).collect()))
        };
        set(c, "ExposedPorts", obj(&self.exposed));
        set(c, "Volumes", obj(&self.volumes));
        set(
            c,
            "Labels",
            (!self.labels.is_empty()).then(|| json!(self.labels)),
        );
        set(c, "StopSignal", self.stop_signal.as_ref().map(|s| json!(s)));
        set(
            c,
            "Shell",
            (!self.shell.is_empty()).then(|| json!(self.shell)),
        );
    }

    pub fn set_env(&mut self, k: &str, v: &str) {
        match self.env.iter_mut().find(|(name, _)| name == k) {
            Some(e) => e.1 = v.to_string(),
            None => self.env.push((k.to_string(), v.to_string())),
        }
    }

    pub fn shell(&self) -> Vec<String> {
        if self.shell.is_empty() {
            vec!["/bin/sh".into(), "-c".into()]
        } else {
            self.shell.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_keep_unknown_fields() {
        let base = json!({
            "Env": ["PATH=/bin", "A=1"],
            "Cmd": ["sh"],
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "Healthcheck": {"Test": ["NONE"]},
        });
        let mut d = RunDefaults::from_config(&base);
        assert_eq!(d.env[1], ("A".to_string(), "1".to_string()));
        d.set_env("A", "2");
        d.set_env("B", "3");
        d.user = "www".into();
        d.cmd = None;
        let mut out = base.as_object().unwrap().clone();
        d.write_into(&mut out);
        let out = Value::Object(out);
        assert_eq!(out["Env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(out["User"], "www");
        assert!(out.get("Cmd").is_none());
        assert!(out["Volumes"]["/data"].is_object());
        assert_eq!(out["Healthcheck"]["Test"], json!(["NONE"]), "kept");
        assert_eq!(d.shell(), vec!["/bin/sh", "-c"]);
    }
}
