//! A minimal `--key value` / `--flag` parser (std only). Everything after a bare `--` is
//! kept as is (a command line to pass on).

use std::collections::HashMap;
use std::str::FromStr;

pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
    rest: Vec<String>,
    used: std::cell::RefCell<Vec<String>>,
}

impl Args {
    /// `flag_names`: options that take no value.
    pub fn parse(argv: &[String], flag_names: &[&str]) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut flags = Vec::new();
        let mut rest = Vec::new();
        let mut it = argv.iter();
        while let Some(a) = it.next() {
            if a == "--" {
                rest = it.by_ref().cloned().collect();
                break;
            }
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
        Ok(Self { values, flags, rest, used: Default::default() })
    }

    /// The arguments after `--` (empty if none).
    pub fn rest(&self) -> Vec<String> {
        self.used.borrow_mut().push("--".to_string());
        self.rest.clone()
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
        if !self.rest.is_empty() && !used.iter().any(|u| u == "--") {
            return Err(format!("unexpected arguments after --: {}", self.rest.join(" ")));
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

    #[test]
    fn keeps_what_follows_double_dash() {
        let a = Args::parse(&v(&["--n", "1", "--", "--port", "7", "x"]), &[]).unwrap();
        assert_eq!(a.get::<u32>("n", 0).unwrap(), 1);
        assert!(a.finish().is_err(), "the rest was never asked for");
        assert_eq!(a.rest(), v(&["--port", "7", "x"]));
        a.finish().unwrap();
        assert!(Args::parse(&v(&["--"]), &[]).unwrap().rest().is_empty());
    }
}
