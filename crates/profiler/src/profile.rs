//! From the analysis to the profile `mcr run --profile` reads (mcr-callstack's format).

use crate::analyze::Analysis;
use mcr_callstack::{Profile, QuiescentPoint, ThreadClass};
use std::path::Path;

impl Analysis {
    /// The profile: the quiescent point of each long-lived class (once per call stack),
    /// and, for people, every class seen. `workload`: the command that drove the server.
    pub fn to_profile(&self, program: &Path, workload: Option<String>) -> Profile {
        let mut qps: Vec<QuiescentPoint> = Vec::new();
        let mut classes = Vec::new();
        for c in &self.classes {
            let qp = c.quiescent_point().filter(|_| c.long_lived);
            let lp = c.long_lived_loop.as_ref().map(|f| f.display_name());
            if let Some(q) = qp {
                if !qps.iter().any(|x| x.id == q.stack.id) {
                    qps.push(QuiescentPoint {
                        id: q.stack.id.clone(),
                        call: q.call.clone(),
                        frames: q.stack.frames.iter().map(|f| f.display_name()).collect(),
                        thread_class: Some(c.label.clone()),
                        long_lived_loop: lp.clone(),
                        share: Some((q.share * 1000.0).round() / 1000.0),
                    });
                }
            }
            classes.push(ThreadClass {
                id: c.id.clone(),
                label: c.label.clone(),
                long_lived: c.long_lived,
                persistent: c.persistent,
                quiescent_point: qp.map(|q| q.stack.id.clone()),
                long_lived_loop: lp,
            });
        }
        Profile {
            format: mcr_callstack::profile::FORMAT.to_string(),
            program: program.display().to_string(),
            quiescent_points: qps,
            thread_classes: classes,
            workload,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::analyze::analyze;
    use crate::analyze::tests::{process, site, stack, thread, COND, CREATE, READ};
    use mcr_callstack::Profile;
    use std::path::Path;

    #[test]
    fn long_lived_classes_give_the_quiescent_points_once_each() {
        // Two kinds of worker (made at two places) wait at the same loop top; a thread
        // that exited is short-lived and gives no quiescent point.
        let mut gone = thread(13, false, Some(&["spawn_helper", "main"]), vec![site("read", READ, 50)], false);
        gone.start_routine = Some("helper".into());
        let end = vec![process(
            10,
            None,
            vec![
                thread(10, true, None, vec![site("accept", &["main", "__libc_start_main"], 100)], true),
                thread(11, false, Some(CREATE), vec![site("pthread_cond_wait", COND, 2), site("read", READ, 1)], true),
                thread(12, false, Some(&["start_more", "main"]), vec![site("pthread_cond_wait", COND, 5)], true),
                gone,
            ],
            100.0,
        )];
        let a = analyze(&[], &[], &end);
        let p = a.to_profile(Path::new("/srv/slowd"), Some("scripts/workloads/slowd.sh".into()));
        let cond = stack(COND).id;
        let ids: Vec<&str> = p.quiescent_points.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids.iter().filter(|id| **id == cond).count(), 1, "{p:#?}");
        assert_eq!(ids.len(), 2, "accept and the workers' wait: {p:#?}");
        assert!(!ids.contains(&stack(READ).id.as_str()), "{p:#?}");
        let accept = p.quiescent_points.iter().find(|q| q.call == "accept").unwrap();
        assert_eq!(accept.frames, ["main", "__libc_start_main"]);
        assert_eq!(accept.long_lived_loop.as_deref(), Some("main"));
        assert_eq!(accept.share, Some(1.0));
        let wait = p.quiescent_points.iter().find(|q| q.id == cond).unwrap();
        assert!(wait.share.is_some_and(|s| s == 0.667 || s == 1.0), "shares are rounded to 3 digits: {wait:?}");

        assert_eq!(p.thread_classes.len(), 4, "{p:#?}");
        let with_wait = p.thread_classes.iter().filter(|c| c.quiescent_point.as_deref() == Some(cond.as_str()));
        assert_eq!(with_wait.count(), 2, "{p:#?}");
        let helper = p.thread_classes.iter().find(|c| c.label.contains("helper")).unwrap();
        assert!(!helper.long_lived && helper.quiescent_point.is_none(), "{helper:?}");
        assert_eq!(p.program, "/srv/slowd");
        assert_eq!(p.workload.as_deref(), Some("scripts/workloads/slowd.sh"));

        // What `mcr run --profile` reads back.
        let text = serde_json::to_string_pretty(&p).unwrap();
        assert_eq!(Profile::parse(&text, "p.json").unwrap(), p);
    }
}
