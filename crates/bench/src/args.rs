//! A minimal `--key value` / `--flag` parser (std only).

use std::collections::HashMap;
use std::str::FromStr;

pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
    used: std::cell::RefCell<Vec<String>>,
}

impl Args {
    /// `flag_names`: options that take no value.
    pub fn parse(argv: &[String], flag_names: &[&str]) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument '{a}'"));
            };
            if let Some((k, v)) = name.split_once('=') {
                values.insert(k.to_string(), v.to_string());
            } else if flag_names.contains(&name) {
                flags.push(name.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                values.insert(name.to_string(), v.clone());
            }
        }
        Ok(Self { values, flags, used: Default::default() })
    }

    #[cfg(test)]
    pub fn flag(&self, name: &str) -> bool {
        self.used.borrow_mut().push(name.to_string());
        self.flags.iter().any(|f| f == name)
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        self.used.borrow_mut().push(name.to_string());
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: cannot parse '{v}'")),
        }
    }

    pub fn required<T: FromStr>(&self, name: &str) -> Result<T, String> {
        self.used.borrow_mut().push(name.to_string());
        let v = self.values.get(name).ok_or_else(|| format!("--{name} is required"))?;
        v.parse().map_err(|_| format!("--{name}: cannot parse '{v}'"))
    }

    /// Errors on any option the command never asked about (typos).
    pub fn finish(&self) -> Result<(), String> {
        let used = self.used.borrow();
        for k in self.values.keys().chain(self.flags.iter()) {
            if !used.contains(k) {
                return Err(format!("unknown option --{k}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_values_flags_and_defaults() {
        let a = Args::parse(&v(&["--port", "7", "--quiet", "--depth=16"]), &["quiet"]).unwrap();
        assert_eq!(a.required::<u16>("port").unwrap(), 7);
        assert_eq!(a.get::<u32>("depth", 1).unwrap(), 16);
        assert_eq!(a.get::<u32>("conns", 8).unwrap(), 8);
        assert!(a.flag("quiet"));
        a.finish().unwrap();
    }

    #[test]
    fn rejects_unknown_and_missing() {
        let a = Args::parse(&v(&["--prot", "7"]), &[]).unwrap();
        assert!(a.required::<u16>("port").is_err());
        assert!(a.finish().is_err());
        assert!(Args::parse(&v(&["--port"]), &[]).is_err());
        assert!(Args::parse(&v(&["port"]), &[]).is_err());
    }
}
