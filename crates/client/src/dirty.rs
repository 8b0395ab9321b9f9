//! Which pages each process of a running instance wrote since its startup completed, per
//! class of mapping (`mcr ctl NAME dirty`): what an update's tracer would have to copy,
//! and what dirty tracking lets it skip. Each process's runtime says how it armed the
//! tracking (status); mcr-dirty reads the pages from the host.

use crate::connection::{ClientError, Connection};
use mcr_dirty::{Counts, DirtyError, DirtyMap, MappingClass, Method};
use mcr_protocol::{DirtyMethod, DirtyTracking, InstanceDir};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// What the processes of instance `name` wrote since their startup.
#[derive(Debug, Serialize)]
pub struct InstanceDirt {
    pub name: String,
    pub page_size: u64,
    pub processes: Vec<ProcessDirt>,
}

impl InstanceDirt {
    /// Whether some process could not be read.
    pub fn any_failed(&self) -> bool {
        self.processes.iter().any(|p| matches!(p, ProcessDirt::Failed(_)))
    }
}

/// One process: its pages, or why they could not be read.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ProcessDirt {
    Scanned(ScannedProcess),
    Failed(FailedProcess),
}

#[derive(Debug, Serialize)]
pub struct ScannedProcess {
    /// The PID inside the instance, and on the host.
    pub pid: i32,
    pub host_pid: i32,
    /// How the pages were read: how the process's runtime armed the tracking.
    #[serde(serialize_with = "method_name")]
    pub method: Method,
    /// Whether tracking is on (armed with a method other than none).
    pub armed: bool,
    /// What the runtime said about arming; `None`: startup not complete, not armed yet.
    pub tracking: Option<DirtyTracking>,
    pub total: PageCounts,
    /// By class of mapping ([`MappingClass::name`]), the classes the process has.
    pub classes: BTreeMap<&'static str, PageCounts>,
    pub mappings: Vec<MappingPages>,
}

#[derive(Debug, Serialize)]
pub struct FailedProcess {
    pub pid: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_pid: Option<i32>,
    #[serde(serialize_with = "display")]
    pub error: ProcessError,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot find the process from the host")]
    NoHostPid,
    #[error(transparent)]
    Scan(#[from] DirtyError),
}

/// Page counts, with what follows from them: dirty pages (written, or untracked) an update
/// copies, clean ones it skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PageCounts {
    pub tracked: u64,
    pub written: u64,
    pub untracked: u64,
    pub dirty: u64,
    pub clean: u64,
}

impl From<Counts> for PageCounts {
    fn from(c: Counts) -> Self {
        PageCounts {
            tracked: c.tracked,
            written: c.written,
            untracked: c.untracked,
            dirty: c.dirty(),
            clean: c.clean(),
        }
    }
}

impl PageCounts {
    /// Writable pages: tracked or not.
    pub fn writable(&self) -> u64 {
        self.tracked + self.untracked
    }
}

/// One mapping and its pages.
#[derive(Debug, Serialize)]
pub struct MappingPages {
    #[serde(serialize_with = "hex")]
    pub start: u64,
    #[serde(serialize_with = "hex")]
    pub end: u64,
    pub path: String,
    #[serde(serialize_with = "class_name")]
    pub class: MappingClass,
    pub counts: PageCounts,
}

impl ScannedProcess {
    /// The report of one scanned process. `tracking`: what its runtime said.
    pub fn new(pid: i32, host_pid: i32, tracking: Option<DirtyTracking>, map: &DirtyMap) -> Self {
        let classes = map.by_class().into_iter().map(|(c, n)| (c.name(), n.into())).collect();
        let mappings = map
            .mappings
            .iter()
            .map(|m| MappingPages {
                start: m.mapping.start,
                end: m.mapping.end,
                path: m.mapping.path.clone(),
                class: m.class,
                counts: m.counts.into(),
            })
            .collect();
        ScannedProcess {
            pid,
            host_pid,
            method: map.method,
            armed: tracking.as_ref().is_some_and(|t| t.method != DirtyMethod::None),
            tracking,
            total: map.counts().into(),
            classes,
            mappings,
        }
    }
}

/// How to read a process's pages, from what its runtime said about arming.
pub fn method_of(tracking: Option<&DirtyTracking>) -> Method {
    match tracking.map(|t| t.method) {
        Some(DirtyMethod::UffdWp) => Method::UffdWp,
        Some(DirtyMethod::SoftDirty) => Method::SoftDirty,
        Some(DirtyMethod::None) | None => Method::None,
    }
}

/// Read what every process of instance `name` wrote since its startup. A process that
/// cannot be read is reported as such; only reaching the instance fails the whole.
pub fn gather(dir: &InstanceDir, name: &str) -> Result<InstanceDirt, ClientError> {
    let st = Connection::open(dir, name)?.status()?;
    let host = crate::pids::host_pids(st.pid_namespace, st.supervisor_pid, st.processes.iter().map(|p| p.pid))
        .unwrap_or_default();
    let processes = st
        .processes
        .into_iter()
        .map(|p| {
            let Some(&hpid) = host.get(&p.pid) else {
                return ProcessDirt::Failed(FailedProcess {
                    pid: p.pid,
                    host_pid: None,
                    error: ProcessError::NoHostPid,
                });
            };
            match mcr_dirty::written_ranges_with(hpid, method_of(p.dirty.as_ref())) {
                Ok(map) => ProcessDirt::Scanned(ScannedProcess::new(p.pid, hpid, p.dirty, &map)),
                Err(e) => ProcessDirt::Failed(FailedProcess { pid: p.pid, host_pid: Some(hpid), error: e.into() }),
            }
        })
        .collect();
    Ok(InstanceDirt { name: st.name, page_size: mcr_dirty::sys::page_size(), processes })
}

fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

fn method_name<S: Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.name())
}

fn class_name<S: Serializer>(c: &MappingClass, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.name())
}

fn display<S: Serializer>(e: &ProcessError, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn own_pages() -> ScannedProcess {
        let me = std::process::id() as i32;
        let map = mcr_dirty::written_ranges_with(me, Method::None).expect("a process can read its own pagemap");
        ScannedProcess::new(2, me, None, &map)
    }

    #[test]
    fn an_unarmed_process_has_every_writable_page_dirty() {
        let p = own_pages();
        assert!(!p.armed && p.method == Method::None);
        assert_eq!(p.total.tracked, 0);
        assert!(p.total.untracked > 0 && p.total.dirty == p.total.untracked && p.total.clean == 0, "{:?}", p.total);
        let sum: u64 = p.classes.values().map(|c| c.untracked).sum();
        assert_eq!(sum, p.total.untracked, "the classes add up to the total");
        assert!(p.classes.contains_key("program"), "{:?}", p.classes.keys());
        let mapped: u64 = p.mappings.iter().map(|m| m.counts.untracked).sum();
        assert_eq!(mapped, p.total.untracked);
    }

    #[test]
    fn the_json_names_methods_classes_and_addresses() {
        let p = own_pages();
        let v = serde_json::to_value(ProcessDirt::Scanned(p)).unwrap();
        assert_eq!(v["method"], "none");
        assert_eq!(v["armed"], false);
        assert_eq!(v["tracking"], serde_json::Value::Null);
        let t = &v["total"];
        assert_eq!(t["dirty"], t["untracked"]);
        assert_eq!(t["clean"], 0);
        let m = &v["mappings"][0];
        assert!(m["start"].as_str().is_some_and(|s| s.starts_with("0x")), "{m}");
        assert!(m["class"].is_string() && m["counts"]["tracked"] == 0, "{m}");

        let failed = [
            ProcessDirt::Failed(FailedProcess { pid: 3, host_pid: None, error: ProcessError::NoHostPid }),
            ProcessDirt::Failed(FailedProcess {
                pid: 4,
                host_pid: Some(44),
                error: DirtyError::Proc {
                    path: "/proc/44/maps".into(),
                    source: std::io::Error::from_raw_os_error(libc::ESRCH),
                }
                .into(),
            }),
        ];
        let v = serde_json::to_value(failed).unwrap();
        assert_eq!(v[0], json!({ "pid": 3, "error": "cannot find the process from the host" }));
        assert_eq!(v[1]["host_pid"], 44);
        assert!(v[1]["error"].as_str().unwrap().starts_with("cannot read /proc/44/maps: "), "{v}");
    }

    #[test]
    fn the_method_follows_the_runtime() {
        let armed = |method| DirtyTracking {
            method,
            armed_at_ms: 1.0,
            arm_us: 10,
            ranges: 1,
            bytes: 4096,
            skipped: 0,
            note: None,
        };
        assert_eq!(method_of(None), Method::None);
        assert_eq!(method_of(Some(&armed(DirtyMethod::UffdWp))), Method::UffdWp);
        assert_eq!(method_of(Some(&armed(DirtyMethod::SoftDirty))), Method::SoftDirty);
        assert_eq!(method_of(Some(&armed(DirtyMethod::None))), Method::None);
    }
}
