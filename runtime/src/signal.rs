//! Signal names and numbers as `kill` takes them: "TERM", "SIGTERM", "term" or "15".

use nix::sys::signal::Signal;

#[derive(Debug, thiserror::Error)]
#[error("\"{0}\" is not a signal: give a name such as TERM, SIGKILL or a number such as 9")]
pub struct BadSignal(pub String);

pub fn parse_signal(s: &str) -> Result<Signal, BadSignal> {
    let bad = || BadSignal(s.to_string());
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("hup").unwrap(), Signal::SIGHUP);
        for bad in ["", "FOO", "SIGFOO", "0", "99", "-1"] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
