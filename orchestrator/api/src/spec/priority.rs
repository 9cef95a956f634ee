//! A service's priority: a named class (`low`, `normal`, `high`, `system`) or a number. When an
//! instance fits on no node, the scheduler may evict instances of strictly lower priority to
//! make room for it (docs/spec.md, "priority").

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// Higher wins. The classes are spaced so numbers can go between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(pub u32);

impl Priority {
    pub const LOW: Priority = Priority(1_000);
    pub const NORMAL: Priority = Priority(2_000);
    pub const HIGH: Priority = Priority(3_000);
    /// The top: nothing preempts `system`.
    pub const SYSTEM: Priority = Priority(1_000_000_000);
    const CLASSES: [(&'static str, Priority); 4] = [
        ("low", Priority::LOW),
        ("normal", Priority::NORMAL),
        ("high", Priority::HIGH),
        ("system", Priority::SYSTEM),
    ];

    pub fn is_default(&self) -> bool {
        *self == Priority::NORMAL
    }

    pub fn parse(text: &str) -> Result<Priority, String> {
        let text = text.trim();
        if let Some((_, p)) = Priority::CLASSES.iter().find(|(name, _)| *name == text) {
            return Ok(*p);
        }
        match text.parse::<u64>() {
            Ok(n) => Priority::from_number(n),
            Err(_) => Err(format!("`{text}` is not {EXPECTED}")),
        }
    }

    fn from_number(n: u64) -> Result<Priority, String> {
        if n > u64::from(Priority::SYSTEM.0) {
            return Err(format!("{n} is too high: expected {EXPECTED}"));
        }
        Ok(Priority(n as u32))
    }

    /// The class name, if it is exactly one.
    pub fn class(&self) -> Option<&'static str> {
        Priority::CLASSES
            .iter()
            .find(|(_, p)| p == self)
            .map(|(name, _)| *name)
    }
}

const EXPECTED: &str = "a priority: `low`, `normal`, `high`, `system`, or a number from 0 to 1000000000 (low = 1000, normal = 2000, high = 3000, system = 1000000000)";

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Priority {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.class() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u32(self.0),
        }
    }
}

struct PriorityVisitor;

impl Visitor<'_> for PriorityVisitor {
    type Value = Priority;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Priority, E> {
        Priority::from_number(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Priority, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative: expected {EXPECTED}")));
        }
        self.visit_u64(v as u64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Priority, E> {
        if v.fract() != 0.0 || v < 0.0 {
            return Err(E::custom(format!("{v} is not {EXPECTED}")));
        }
        self.visit_u64(v as u64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Priority, E> {
        Priority::parse(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PriorityVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_numbers_round_trip() {
        for (text, p) in [
            ("\"low\"", Priority::LOW),
            ("\"normal\"", Priority::NORMAL),
            ("\"high\"", Priority::HIGH),
            ("\"system\"", Priority::SYSTEM),
            ("2500", Priority(2_500)),
            ("\"2500\"", Priority(2_500)),
            ("0", Priority(0)),
        ] {
            let parsed: Priority = serde_json::from_str(text).unwrap();
            assert_eq!(parsed, p, "{text}");
            let back: Priority =
                serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
            assert_eq!(back, p);
        }
        assert_eq!(serde_json::to_string(&Priority::HIGH).unwrap(), "\"high\"");
        assert_eq!(serde_json::to_string(&Priority(2_500)).unwrap(), "2500");
        assert!(Priority::LOW < Priority::NORMAL && Priority::HIGH < Priority::SYSTEM);
    }

    #[test]
    fn bad_priorities_say_what_is_allowed() {
        for text in ["\"urgent\"", "-1", "1000000001", "1.5"] {
            let err = serde_json::from_str::<Priority>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("`low`, `normal`, `high`, `system`"), "{err}");
        }
    }
}
