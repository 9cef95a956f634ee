//! Quantities in a spec file: CPU, memory and ports, with the units people write.
//!
//! Each type accepts the forms documented in docs/spec.md and says what is allowed when a
//! value is rejected, because that text ends up in front of the person who wrote the file.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// Most CPU a single service may ask for: 1024 cores, in millicores.
pub const MAX_CPU_MILLIS: u64 = 1024 * 1000;
/// Most memory a single service may ask for: 16 TiB.
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;

/// CPU in millicores. Written as a number of cores (`0.5`, `2`) or a string (`"500m"`, `"2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cpu(pub u64);

/// Memory in bytes. Written as bytes (`268435456`) or with a unit (`"256Mi"`, `"1G"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory(pub u64);

/// A TCP/UDP port number, 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u16);

const CPU_EXPECTED: &str = "a CPU amount: a positive number of cores (0.5, 2) or millicores as a string (\"500m\"), at most 1024 cores";
const MEMORY_EXPECTED: &str = "a memory amount: bytes (268435456) or a string with a unit (\"256Mi\", \"1Gi\", \"512M\"), at most 16Ti";
const PORT_EXPECTED: &str = "a port number from 1 to 65535";

impl Cpu {
    pub fn parse(text: &str) -> Result<Cpu, String> {
        let text = text.trim();
        let millis = if let Some(m) = text.strip_suffix('m') {
            m.parse::<u64>()
                .map_err(|_| format!("`{text}` is not {CPU_EXPECTED}"))?
        } else {
            let cores: f64 = text
                .parse()
                .map_err(|_| format!("`{text}` is not {CPU_EXPECTED}"))?;
            return Cpu::from_cores(cores);
        };
        Cpu::from_millis(millis)
    }
    pub fn from_cores(cores: f64) -> Result<Cpu, String> {
        if !cores.is_finite() || cores < 0.0 {
            return Err(format!("{cores} is not {CPU_EXPECTED}"));
        }
        Cpu::from_millis((cores * 1000.0).round() as u64)
    }
    fn from_millis(millis: u64) -> Result<Cpu, String> {
        if millis > MAX_CPU_MILLIS {
            return Err(format!("{millis}m is too much: expected {CPU_EXPECTED}"));
        }
        Ok(Cpu(millis))
    }
}

impl Memory {
    pub fn parse(text: &str) -> Result<Memory, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let multiplier: u64 = match unit {
            "" => 1,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            _ => {
                return Err(format!(
                    "`{text}` has unknown unit `{unit}`: expected {MEMORY_EXPECTED}"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not {MEMORY_EXPECTED}"))?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > MAX_MEMORY_BYTES as f64 {
            return Err(format!(
                "`{text}` is out of range: expected {MEMORY_EXPECTED}"
            ));
        }
        Ok(Memory(bytes as u64))
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, size) in [
            ("Ti", 1u64 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if b >= size && b % size == 0 {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}")
    }
}

/// Bytes for people, to a tenth of the largest binary unit that fits: `16Mi`, `23.5Gi`,
/// `512` (not `16777216` or `24683772Ki`).
pub fn human_bytes(bytes: u64) -> String {
    for (unit, size) in [
        ("Ti", 1u64 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if bytes >= size {
            let tenths = (bytes as u128 * 10 + size as u128 / 2) / size as u128;
            return if tenths % 10 == 0 {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    bytes.to_string()
}

/// Millicores for people, in cores to a tenth: `1.6`, `2`, `0.1`; below that `50m`.
pub fn human_cpu(millis: u64) -> String {
    if millis > 0 && millis < 100 {
        return format!("{millis}m");
    }
    let tenths = (millis + 50) / 100;
    if tenths % 10 == 0 {
        format!("{}", tenths / 10)
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}m", self.0))
    }
}
impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}
impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.0)
    }
}

/// One visitor for the three quantities: numbers and strings in, a checked value out.
struct QuantityVisitor<T> {
    expected: &'static str,
    from_f64: fn(f64) -> Result<T, String>,
    from_str: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for QuantityVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.from_f64)(v as f64).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.from_f64)(v as f64).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.from_f64)(v).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.from_str)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor {
            expected: CPU_EXPECTED,
            from_f64: Cpu::from_cores,
            from_str: Cpu::parse,
        })
    }
}

fn memory_from_f64(v: f64) -> Result<Memory, String> {
    if v < 0.0 || v.fract() != 0.0 || v > MAX_MEMORY_BYTES as f64 {
        return Err(format!("{v} is not {MEMORY_EXPECTED}"));
    }
    Ok(Memory(v as u64))
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor {
            expected: MEMORY_EXPECTED,
            from_f64: memory_from_f64,
            from_str: Memory::parse,
        })
    }
}

fn port_from_f64(v: f64) -> Result<Port, String> {
    if v.fract() != 0.0 || !(1.0..=65535.0).contains(&v) {
        return Err(format!(
            "port {v} is out of range: expected {PORT_EXPECTED}"
        ));
    }
    Ok(Port(v as u16))
}

fn port_from_str(v: &str) -> Result<Port, String> {
    let n: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("`{v}` is not {PORT_EXPECTED}"))?;
    port_from_f64(n)
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor {
            expected: PORT_EXPECTED,
            from_f64: port_from_f64,
            from_str: port_from_str,
        })
    }
}

/// A count of instances for rolling updates: absolute (`1`) or a share of replicas (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateCount {
    Absolute(u32),
    Percent(u32),
}

const COUNT_EXPECTED: &str =
    "a number of instances (1) or a percentage of replicas from \"0%\" to \"100%\"";

impl UpdateCount {
    pub fn is_zero(self) -> bool {
        matches!(self, UpdateCount::Absolute(0) | UpdateCount::Percent(0))
    }
    /// Instances for `replicas`; a percentage rounds up (surge) or down (unavailable).
    pub fn resolve(self, replicas: u32, round_up: bool) -> u32 {
        match self {
            UpdateCount::Absolute(n) => n,
            UpdateCount::Percent(p) => {
                let scaled = u64::from(replicas) * u64::from(p);
                (if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                }) as u32
            }
        }
    }
    fn parse(text: &str) -> Result<UpdateCount, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is not {COUNT_EXPECTED}");
        match text.strip_suffix('%') {
            Some(p) => {
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                if p > 100 {
                    return Err(bad());
                }
                Ok(UpdateCount::Percent(p))
            }
            None => text.parse().map(UpdateCount::Absolute).map_err(|_| bad()),
        }
    }
    fn from_f64(v: f64) -> Result<UpdateCount, String> {
        if v < 0.0 || v.fract() != 0.0 || v > f64::from(u32::MAX) {
            return Err(format!("{v} is not {COUNT_EXPECTED}"));
        }
        Ok(UpdateCount::Absolute(v as u32))
    }
}

impl fmt::Display for UpdateCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateCount::Absolute(n) => write!(f, "{n}"),
            UpdateCount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for UpdateCount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UpdateCount::Absolute(n) => s.serialize_u32(*n),
            UpdateCount::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for UpdateCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor {
            expected: COUNT_EXPECTED,
            from_f64: UpdateCount::from_f64,
            from_str: UpdateCount::parse,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn update_counts() {
        assert_eq!(UpdateCount::parse("25%").unwrap().resolve(10, true), 3);
        assert_eq!(UpdateCount::parse("25%").unwrap().resolve(10, false), 2);
        assert_eq!(UpdateCount::parse("2").unwrap().resolve(10, false), 2);
        assert!(UpdateCount::parse("101%").is_err());
        assert!(UpdateCount::from_f64(-1.0).is_err());
        let json: UpdateCount = serde_json::from_str("\"50%\"").unwrap();
        assert_eq!(
            (json, serde_json::to_string(&json).unwrap()),
            (UpdateCount::Percent(50), "\"50%\"".to_string())
        );
    }

    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(Cpu::parse("500m").unwrap(), Cpu(500));
        assert_eq!(Cpu::parse("2").unwrap(), Cpu(2000));
        assert_eq!(Cpu::from_cores(0.25).unwrap(), Cpu(250));
        assert!(Cpu::from_cores(-1.0).is_err());
        assert!(Cpu::parse("5000").is_err());
        assert!(Cpu::parse("abc").is_err());
    }

    #[test]
    fn memory_forms() {
        assert_eq!(Memory::parse("256Mi").unwrap(), Memory(256 << 20));
        assert_eq!(Memory::parse("1G").unwrap(), Memory(1_000_000_000));
        assert_eq!(Memory::parse("1024").unwrap(), Memory(1024));
        assert!(Memory::parse("-1Mi").is_err());
        assert!(Memory::parse("3Zi").is_err());
        assert!(Memory::parse("17Ti").is_err());
        assert_eq!(Memory(256 << 20).to_string(), "256Mi");
    }

    #[test]
    fn port_range() {
        assert!(port_from_f64(0.0).is_err());
        assert!(port_from_f64(70000.0).is_err());
        assert_eq!(port_from_f64(8080.0).unwrap(), Port(8080));
    }
}

/// A percentage, written `70%` or `70`: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(pub u32);

const PERCENT_EXPECTED: &str = "a percentage from 1% to 1000%, like 70%";

impl Percent {
    pub fn parse(text: &str) -> Result<Percent, String> {
        let t = text.trim();
        let n: u32 = t
            .strip_suffix('%')
            .unwrap_or(t)
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not {PERCENT_EXPECTED}"))?;
        Percent::from_number(n)
    }
    fn from_number(n: u32) -> Result<Percent, String> {
        if (1..=1000).contains(&n) {
            Ok(Percent(n))
        } else {
            Err(format!("{n}% is not {PERCENT_EXPECTED}"))
        }
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(PERCENT_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                Percent::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                Percent::from_number(u32::try_from(v).unwrap_or(u32::MAX)).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                Percent::from_number(u32::try_from(v).unwrap_or(0)).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Percent, E> {
                Err(E::custom(format!(
                    "{v} is not {PERCENT_EXPECTED} (a whole number)"
                )))
            }
        }
        d.deserialize_any(V)
    }
}
