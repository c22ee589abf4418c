//! Configuration from the environment, which is how containers are configured: every
//! `[pooler]` key can be overridden by `POOLER_<KEY>` (`POOLER_DEFAULT_POOL_SIZE=50`), and a
//! database entry's key by `POOLER_DATABASES__<NAME>__<KEY>` (`POOLER_DATABASES__APP__HOST=db`).
//! Overrides win over the file; a variable that names no key is an error, so a typo cannot
//! silently leave the file's value in force.

use crate::config::{KeyKind, PoolerSettings};

/// The config file's path (also `--config`).
pub const CONFIG_VAR: &str = "POOLER_CONFIG";
/// The log filter.
pub const LOG_VAR: &str = "POOLER_LOG";
const PREFIX: &str = "POOLER_";
const DATABASES: &str = "DATABASES__";

/// The `POOLER_*` variables that are config overrides, in a stable order.
pub fn overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k != CONFIG_VAR && k != LOG_VAR)
        .collect();
    list.sort();
    list
}

/// The overrides in this process's environment (variables that are not UTF-8 are skipped).
pub fn from_process() -> Vec<(String, String)> {
    overrides(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
}

/// Database entry keys whose values are text.
const DATABASE_TEXT_KEYS: &[&str] = &["host", "dbname", "user", "password", "pool_mode"];

/// Writes the overrides into a parsed config file.
pub fn apply(table: &mut toml::Table, overrides: &[(String, String)]) -> Result<(), String> {
    let settings = PoolerSettings::default().entries();
    for (var, raw) in overrides {
        let name = var.strip_prefix(PREFIX).unwrap_or(var);
        let (section, key, kind) = match name.strip_prefix(DATABASES) {
            Some(rest) => {
                let Some((db, key)) = rest.split_once("__") else {
                    return Err(format!("{var}: expected POOLER_DATABASES__<NAME>__<KEY>"));
                };
                let key = key.to_ascii_lowercase();
                let kind = if DATABASE_TEXT_KEYS.contains(&key.as_str()) {
                    KeyKind::Text
                } else {
                    KeyKind::Value
                };
                let databases = table
                    .entry("databases")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(databases) = databases.as_table_mut() else {
                    return Err("databases: must be a table".into());
                };
                let entry = databases
                    .entry(db.to_ascii_lowercase())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                (entry, key, kind)
            }
            None => {
                let key = name.to_ascii_lowercase();
                let Some((_, _, kind)) = settings.iter().find(|(k, _, _)| *k == key) else {
                    return Err(format!("{var}: no such setting `{key}`"));
                };
                let section = table
                    .entry("pooler")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                (section, key, *kind)
            }
        };
        let value = match kind {
            KeyKind::Text => toml::Value::String(raw.clone()),
            KeyKind::Value => parse_value(raw)
                .ok_or_else(|| format!("{var}: `{raw}` is not a valid value for {key}"))?,
            KeyKind::Bool => match raw.to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => toml::Value::Boolean(true),
                "0" | "false" | "off" | "no" => toml::Value::Boolean(false),
                _ => return Err(format!("{var}: `{raw}` is not a boolean (1/0, true/false)")),
            },
        };
        let Some(section) = section.as_table_mut() else {
            return Err(format!("{var}: the section it belongs to is not a table"));
        };
        section.insert(key, value);
    }
    Ok(())
}

/// A number or boolean written as TOML would write it.
fn parse_value(raw: &str) -> Option<toml::Value> {
    let mut t: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    t.remove("v")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        overrides(list.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn overrides_skip_the_path_and_log_variables() {
        let o = vars(&[
            ("POOLER_CONFIG", "x"),
            ("POOLER_LOG", "debug"),
            ("HOME", "/root"),
            ("POOLER_LISTEN_PORT", "7000"),
        ]);
        assert_eq!(o, vec![("POOLER_LISTEN_PORT".into(), "7000".into())]);
    }

    #[test]
    fn every_key_kind_overrides_the_file() {
        let mut t: toml::Table =
            toml::from_str("[pooler]\ndefault_pool_size = 3\n[databases.app]\nport = 1\n").unwrap();
        apply(
            &mut t,
            &vars(&[
                ("POOLER_DEFAULT_POOL_SIZE", "7"),
                ("POOLER_LISTEN_ADDR", "0.0.0.0"),
                ("POOLER_LOG_CONNECTIONS", "false"),
                ("POOLER_QUERY_TIMEOUT", "1.5"),
                ("POOLER_ADMIN_USERS", "a, b"),
                ("POOLER_DATABASES__APP__HOST", "db.internal"),
                ("POOLER_DATABASES__APP__PORT", "5433"),
            ]),
        )
        .unwrap();
        let c: Config = t.try_into().unwrap();
        assert_eq!(c.pooler.default_pool_size, 7);
        assert_eq!(c.pooler.listen_addr, "0.0.0.0");
        assert!(!c.pooler.log_connections);
        assert_eq!(c.pooler.query_timeout, 1.5);
        assert_eq!(c.pooler.admin_users.names(), vec!["a", "b"]);
        assert_eq!(c.databases["app"].host, "db.internal");
        assert_eq!(c.databases["app"].port, 5433);
    }

    #[test]
    fn unknown_or_bad_overrides_are_named() {
        let mut t = toml::Table::new();
        let e = apply(&mut t, &vars(&[("POOLER_DEFAULT_POOL_SISE", "7")])).unwrap_err();
        assert!(
            e.contains("POOLER_DEFAULT_POOL_SISE") && e.contains("default_pool_sise"),
            "{e}"
        );
        let e = apply(&mut t, &vars(&[("POOLER_DEFAULT_POOL_SIZE", "many")])).unwrap_err();
        assert!(e.contains("POOLER_DEFAULT_POOL_SIZE"), "{e}");
    }

    #[test]
    fn every_setting_can_be_overridden_with_its_own_default() {
        let d = PoolerSettings::default();
        for (key, value, _) in d.entries() {
            let var = format!("POOLER_{}", key.to_ascii_uppercase());
            let mut t = toml::Table::new();
            if value.is_empty() {
                continue; // unset paths
            }
            apply(&mut t, &[(var.clone(), value.clone())]).unwrap();
            let r: Result<Config, _> = t.try_into();
            assert!(r.is_ok(), "{var}={value}: {:?}", r.err());
        }
    }
}
