//! `ZHIJIAN_<SECTION>_<KEY>` environment variables, read as the type the
//! key takes.

use super::*;

/// The TOML value of an environment variable for `[section] key`: the
/// first reading of the text (an integer, a boolean, the text itself) that
/// the key takes. Booleans may also be written 1/0, yes/no, on/off.
pub(crate) fn env_value(section: &str, key: &str, v: &str) -> Result<toml::Value, EnvError> {
    let trimmed = v.trim();
    let mut readings = Vec::new();
    if let Ok(i) = trimmed.parse::<i64>() {
        readings.push(toml::Value::Integer(i));
    }
    match trimmed.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => readings.push(toml::Value::Boolean(true)),
        "0" | "false" | "no" | "off" => readings.push(toml::Value::Boolean(false)),
        _ => {}
    }
    readings.push(toml::Value::String(v.to_string()));
    let mut first_error = None;
    for reading in readings {
        let mut one = toml::Table::new();
        one.insert(key.to_string(), reading.clone());
        let mut probe = toml::Table::new();
        probe.insert(section.to_string(), toml::Value::Table(one));
        match RawConfig::deserialize(probe) {
            Ok(_) => return Ok(reading),
            Err(e) => {
                if e.message().trim().starts_with("unknown field") {
                    return Err(EnvError::UnknownKey {
                        section: section.to_string(),
                        key: key.to_string(),
                    });
                }
                first_error.get_or_insert(Box::new(e));
            }
        }
    }
    Err(EnvError::Value {
        section: section.to_string(),
        key: key.to_string(),
        value: v.to_string(),
        source: first_error,
    })
}
