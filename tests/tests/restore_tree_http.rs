//! `python3 -m http.server` started by a shell script that waits for it
//! (`workloads/tree_http.sh`), dumped by the script's pid: restored as a
//! tree it answers `curl` on its port, and the script is still its parent,
//! waiting: when the server is terminated the script's `wait` returns 143.

use crimg_tests::programs::{curl, free_port, require_program, wait_until, PROGRAM_READY_TIMEOUT};
use crimg_tests::tree::{become_subreaper, dump_and_kill_tree, restore_tree, Tree, TreeGuard};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, workload_path};

#[test]
fn a_script_and_its_http_server_come_back_and_serve() {
    skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        let (Some(_), Some(_)) = (
            require_program("python3", "python3"),
            require_program("curl", "curl"),
        ) else {
            return;
        };
        become_subreaper();
        let bins = binaries();
        let scratch = scratch_dir();
        let www = scratch.path().join("www");
        std::fs::create_dir(&www).unwrap();
        std::fs::write(www.join("before.txt"), "served before the dump\n").unwrap();
        let port = free_port().to_string();
        let www_arg = www.display().to_string();
        let mut tree = Tree::spawn(
            &workload_path("tree_http.sh"),
            [port.as_str(), www_arg.as_str()],
            &scratch.path().join("out"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let server: i32 = tree.out.expect_lines("READY", 1)[0]
            .number("server")
            .unwrap()
            .try_into()
            .unwrap();
        tree.out.expect_lines("Serving HTTP on", 1);
        let url = format!("http://127.0.0.1:{port}");
        let body = wait_until("http.server answers", PROGRAM_READY_TIMEOUT, || {
            curl(&format!("{url}/before.txt"))
        });
        assert_eq!(body, "served before the dump\n");
        let held = TreeGuard::hold_tree(tree.pid());
        assert!(held.pids().contains(&server), "{:?}", held.pids());
        let dump = dump_and_kill_tree(&bins, &mut tree, &held, &scratch.path().join("dump"));

        restore_tree(&dump.dir, [] as [&str; 0], &held.pids());
        let restored = TreeGuard::hold_tree(tree.pid());
        assert_eq!(restored.pids(), held.pids());
        std::fs::write(www.join("after.txt"), "written after the restore\n").unwrap();
        let after = curl(&format!("{url}/after.txt")).unwrap_or_else(|e| {
            panic!(
                "the restored http.server does not answer on port {port}: {e}\n{}",
                tree.out.recent()
            )
        });
        assert_eq!(after, "written after the restore\n");
        tree.out.mark();
        restored.signal(server, libc::SIGTERM);
        let exited = tree.out.expect_line("EXITED");
        assert_eq!(exited.get("status"), Some("143"), "{}", exited.line());
    });
}
