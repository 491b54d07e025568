//! An interactive bash in a tmux pane running `yes | head -c 100G |
//! md5sum` in the foreground, dumped by the shell's pid (the shell and its
//! job's three processes, in the job's process group, the terminal's
//! foreground group): restored in a new tmux window (`crrestore-tree --wait
//! DIR` is the window's command), the tree has its sessions and groups
//! again, the job is the new terminal's foreground group, Ctrl-C reaches it
//! and the shell's prompt comes back, with `$?` the job's 130.

use std::time::Duration;

use crimg_tests::programs::{require_program, wait_until};
use crimg_tests::tmux::{wait_child_named, Tmux};
use crimg_tests::tree::{
    become_subreaper, crrestore_tree_binary, kill_left_behind, stat_fields, state_of, tree_pids,
    TreeGuard, TREE_TIMEOUT,
};
use crimg_tests::{binaries, scratch_dir, skip_unless_root};

const WAIT: Duration = Duration::from_secs(30);
const PROMPT: &str = "tree-prompt> ";

/// (pid, pgid, sid, tpgid) of each process of the tree under `root`.
fn shape(root: i32) -> Vec<(i32, i32, i32, i32)> {
    tree_pids(root)
        .into_iter()
        .map(|p| {
            let f = stat_fields(p).unwrap_or_else(|| panic!("pid {p} vanished"));
            let n = |i: usize| f[i].parse::<i32>().unwrap();
            (p, n(2), n(3), n(5))
        })
        .collect()
}

#[test]
fn ctrl_c_reaches_the_restored_foreground_job_and_the_prompt_comes_back() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        let (Some(_), Some(_)) = (
            require_program("tmux", "tmux"),
            require_program("bash", "bash"),
        ) else {
            return;
        };
        become_subreaper();
        let bins = binaries();
        let restorer = crrestore_tree_binary().unwrap_or_else(|e| panic!("{e}"));
        let scratch = scratch_dir();
        let prompt = format!("PS1={PROMPT}");
        let tmux = Tmux::start(
            scratch.path(),
            100,
            30,
            "env",
            [
                prompt.as_str(),
                "HISTFILE=",
                "bash",
                "--norc",
                "--noprofile",
                "-i",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // The window stays when the dump kills its shell: the server lives on
        // for the window the tree comes back in.
        tmux.tmux(["set-option", "-g", "remain-on-exit", "on"])
            .unwrap_or_else(|e| panic!("{e}"));
        let bash = tmux.pane_pid().unwrap();
        tmux.wait_contains(PROMPT).unwrap_or_else(|e| panic!("{e}"));
        tmux.type_line("yes | head -c 100G | md5sum").unwrap();
        let job: Vec<i32> = ["yes", "head", "md5sum"]
            .iter()
            .map(|comm| wait_child_named(bash, comm, WAIT).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let held = TreeGuard::hold_tree(bash);
        let before = shape(bash);
        assert_eq!(before.len(), 4, "bash and its job: {before:?}");
        let job_pgid = before.iter().find(|s| s.0 == job[0]).unwrap().1;
        assert!(
            before.iter().all(|s| s.3 == job_pgid),
            "the job is the foreground group: {before:?}"
        );

        let dump = bins
            .dump(bash, &scratch.path().join("dump"), false)
            .unwrap_or_else(|e| panic!("crdump refused the shell's tree: {e}"));
        // tmux 3.3 sometimes misses the SIGCHLD of a pane's process that was
        // stopped (frozen) before it was killed, and leaves it a zombie
        // (`kill -STOP; kill -KILL` does it too): another SIGCHLD makes it
        // reap, so the shell's pid is free for the restore.
        let server = nix::unistd::Pid::from_raw(tmux.server_pid());
        wait_until("tmux reaps the dumped shell", TREE_TIMEOUT, || {
            if held.present().contains(&bash) {
                let _ = nix::sys::signal::kill(server, nix::sys::signal::Signal::SIGCHLD);
                Err(format!("pid {bash} is {:?}", state_of(bash)))
            } else {
                Ok(())
            }
        });
        held.wait_gone(TREE_TIMEOUT)
            .unwrap_or_else(|e| panic!("crdump did not kill the tree: {e}"));

        let (restorer, dir) = (
            restorer.display().to_string(),
            dump.dir.display().to_string(),
        );
        tmux.tmux([
            "new-window",
            "-t",
            "test",
            restorer.as_str(),
            "--wait",
            dir.as_str(),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let held_pids = held.pids();
        wait_until("the tree is back", TREE_TIMEOUT, || {
            let dead = tmux
                .tmux(["display-message", "-p", "-t", "test", "#{pane_dead_status}"])
                .unwrap_or_default();
            if !dead.trim().is_empty() {
                kill_left_behind(&held_pids);
                let screen = tmux.screen().unwrap_or_default();
                crimg_tests::tree::panic_if_pid_taken(dead.trim().parse().ok(), &screen);
                panic!(
                    "crrestore-tree --wait exited with status {} in the new window; the screen:\n{}",
                    dead.trim(),
                    tmux.screen().unwrap_or_default()
                );
            }
            let comms: Vec<String> = tree_pids(bash)
                .iter()
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                })
                .collect();
            if comms.len() == 4 && comms[0] == "bash" && comms.iter().any(|c| c == "md5sum") {
                Ok(())
            } else {
                Err(format!(
                    "{comms:?}; screen:\n{}",
                    tmux.screen().unwrap_or_default()
                ))
            }
        });
        let restored = TreeGuard::hold_tree(bash);
        let after = shape(bash);
        // Same pids, groups and sessions; the foreground group of the new
        // terminal is the job's again.
        assert_eq!(
            after, before,
            "pid, pgid, sid, tpgid after (left) and before (right)"
        );

        tmux.send_keys(&["C-c"]).unwrap();
        for p in &job {
            wait_until(&format!("Ctrl-C ends job process {p}"), WAIT, || {
                if tree_pids(bash).contains(p) {
                    Err(tmux.screen().unwrap_or_default())
                } else {
                    Ok(())
                }
            });
        }
        tmux.wait_contains(PROMPT).unwrap_or_else(|e| panic!("{e}"));
        tmux.type_line("echo status-$?-alive-$((6*7))").unwrap();
        tmux.wait_contains("status-130-alive-42")
            .unwrap_or_else(|e| panic!("{e}"));
        tmux.type_line("exit").unwrap();
        wait_until("the restored bash exits", WAIT, || {
            if restored.present().is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}", restored.present()))
            }
        });
    });
}
