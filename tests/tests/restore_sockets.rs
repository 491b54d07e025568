//! Sockets round-trip: unix pairs (stream, datagram, seqpacket, one whose
//! peer closed) with their queued data in both directions, listeners (TCP
//! over IPv4 and IPv6, unix on a path and abstract) and a bound UDP socket
//! with their options; and the refusals: a restore while the dumped
//! process still holds its ports fails in stage 1 naming the address, a
//! socket file that something else replaced is left alone, an
//! established TCP connection is refused at dump by name.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::Path;
use std::time::Duration;

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::inspect::fd_numbers as fds_of;
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT};
use crimg_tests::{binaries, scratch_dir, Facts, Workload};

/// Connect to each listener of the workload (which printed LISTENING) and
/// send one datagram to its UDP socket: each answers "pong".
fn talk_to(ready: &Facts) {
    let port = |key: &str| -> u16 { ready.require(key).unwrap().parse().unwrap() };
    let timeout = Some(Duration::from_secs(20));
    let mut streams: Vec<(String, Box<dyn ReadWrite>)> = Vec::new();
    let tcp = TcpStream::connect(("127.0.0.1", port("tcp"))).expect("connect to the TCP listener");
    let tcp6 = TcpStream::connect(("::1", port("tcp6"))).expect("connect to the TCP6 listener");
    let path = ready.require("path").unwrap();
    let unix = UnixStream::connect(path).expect("connect to the unix listener on its path");
    let name = SocketAddr::from_abstract_name(ready.require("abstract").unwrap()).unwrap();
    let abstract_ = UnixStream::connect_addr(&name).expect("connect to the abstract listener");
    for s in [&tcp, &tcp6] {
        s.set_read_timeout(timeout).unwrap();
    }
    for s in [&unix, &abstract_] {
        s.set_read_timeout(timeout).unwrap();
    }
    streams.push(("tcp".into(), Box::new(tcp)));
    streams.push(("tcp6".into(), Box::new(tcp6)));
    streams.push(("unix path".into(), Box::new(unix)));
    streams.push(("unix abstract".into(), Box::new(abstract_)));
    for (_, s) in &mut streams {
        s.write_all(b"ping").unwrap();
    }
    // In the order the workload serves them: it waits for each to close
    // before the next.
    for (what, mut s) in streams {
        let mut answer = [0u8; 4];
        s.read_exact(&mut answer)
            .unwrap_or_else(|err| panic!("no answer on the {what} connection: {err}"));
        assert_eq!(&answer, b"pong", "{what}");
    }
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(timeout).unwrap();
    udp.send_to(b"ping", ("127.0.0.1", port("udp"))).unwrap();
    let mut answer = [0u8; 4];
    let (n, _) = udp.recv_from(&mut answer).expect("an answer on UDP");
    assert_eq!(&answer[..n], b"pong");
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Ask for a check, serve the test's connections, expect PASS.
fn check_and_talk(w: &mut Workload, ready: &Facts) {
    w.send_line("check").unwrap();
    w.expect_line("LISTENING");
    talk_to(ready);
    let verdict = w
        .stdout()
        .wait_for_any(&["PASS ", "FAIL "], LINE_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        verdict.starts_with("PASS "),
        "{verdict}\n{}",
        w.stderr_report()
    );
}

/// The loader run on `image`: it must exit with `code` and one line on
/// stderr, returned.
fn refusal(output: RunOutput, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "the loader exited with {}; stderr:\n{}",
        output.status,
        output.stderr
    );
    let lines: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| !l.contains(": warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "stderr:\n{}", output.stderr);
    lines[0].to_owned()
}

#[test]
fn sockets_keep_their_queues_options_and_ports() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut w = Workload::start("sockets", [scratch.path()]);
    let ready = w.ready().cloned().unwrap();
    let fds_before = fds_of(w.pid());
    let dump = bins
        .dump(w.pid(), &scratch.path().join("out"), true)
        .unwrap_or_else(|err| panic!("{err}\n{}", w.stderr_report()));

    // The original still holds its addresses: stage 1 refuses, naming one.
    let output = cli::run(bins.loader_command(&dump.image), LINE_TIMEOUT).unwrap();
    let line = refusal(output, 10);
    let tcp = format!("127.0.0.1:{}", ready.require("tcp").unwrap());
    assert!(
        line.contains("in use (EADDRINUSE") && line.contains(&tcp),
        "{line}"
    );

    // The dump consumed nothing: the original passes its own check.
    check_and_talk(&mut w, &ready);
    w.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    w.wait_exit(LINE_TIMEOUT).unwrap();

    // Its socket file is left behind. Something other than that socket in
    // its place (a symlink to it) is refused and left alone.
    let path = Path::new(ready.require("path").unwrap()).to_owned();
    let moved = path.with_extension("moved");
    std::fs::rename(&path, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &path).unwrap();
    let output = cli::run(bins.loader_command(&dump.image), LINE_TIMEOUT).unwrap();
    let line = refusal(output, 5);
    assert!(
        line.contains(&path.display().to_string()) && line.contains("not a socket"),
        "{line}"
    );
    assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
    assert!(moved.exists());
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&moved, &path).unwrap();

    // The stale socket file is replaced; every queue, option and listener
    // is back.
    let mut restored = bins.restore("sockets (restored)", &dump.image).unwrap();
    check_and_talk(&mut restored, &ready);
    // The same fd numbers, and no socket of the restore left behind.
    assert_eq!(fds_of(restored.pid()), fds_before);
}

#[test]
fn an_established_tcp_connection_is_refused_by_name() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut w = Workload::start("sockets", ["--established"]);
    let port = w.ready().unwrap().require("tcp").unwrap().to_owned();
    let out = scratch.path().join("out");
    let output = cli::run(bins.crdump_command(w.pid(), &out, false), LINE_TIMEOUT).unwrap();
    assert!(
        !output.status.success(),
        "crdump succeeded: {}",
        output.stderr
    );
    assert!(
        output
            .stderr
            .contains("is an established TCP connection 127.0.0.1:")
            && output
                .stderr
                .contains(&format!("-> 127.0.0.1:{port}: not saved yet")),
        "{}",
        output.stderr
    );
    assert!(!out.join(format!("task-{}.crimg", w.pid())).exists());
    // Left running, its connection intact.
    w.expect_pass(CheckTrigger::Stdin);
}

/// `python3 -u -c script`, once it printed a line starting with `first`
/// (returned).
fn python(script: &str, first: &str) -> (Workload, String) {
    let mut command = std::process::Command::new("python3");
    command.args(["-u", "-c", script]);
    let mut w = Workload::spawn_command("python3", command).unwrap_or_else(|err| panic!("{err}"));
    let line = w.expect_line(first);
    (w, line)
}

/// crdump of `w` must fail with `want` in its message, write nothing, and
/// leave `w` running.
fn expect_dump_refused(w: &mut Workload, want: &str) -> String {
    let bins = binaries();
    let scratch = scratch_dir();
    let out = scratch.path().join("out");
    let output = cli::run(bins.crdump_command(w.pid(), &out, false), LINE_TIMEOUT).unwrap();
    assert!(
        !output.status.success(),
        "crdump succeeded: {}",
        output.stderr
    );
    assert!(output.stderr.contains(want), "{}", output.stderr);
    assert!(!out.join(format!("task-{}.crimg", w.pid())).exists());
    output.stderr
}

#[test]
fn file_descriptors_in_flight_are_refused_and_left_queued() {
    crimg_tests::skip_unless_root!();
    let script = r#"
import os, socket, sys
a, b = socket.socketpair()
r, w = os.pipe()
socket.send_fds(a, [b"with an fd"], [r])
os.close(r)
print("ready", flush=True)
for line in sys.stdin:
    msg, fds, _, _ = socket.recv_fds(b, 64, 4)
    print("alive", msg.decode(), len(fds), flush=True)
"#;
    let (mut w, _) = python(script, "ready");
    expect_dump_refused(
        &mut w,
        "file descriptor(s) in flight (SCM_RIGHTS): not saved",
    );
    // The message and its fd are still queued (peeking took copies only).
    w.send_line("x").unwrap();
    assert_eq!(w.expect_line("alive"), "alive with an fd 1");
}

#[test]
fn a_unix_socket_whose_peer_is_in_another_process_is_refused_naming_it() {
    crimg_tests::skip_unless_root!();
    let script = r#"
import os, socket, sys, time
a, b = socket.socketpair()
r, w = os.pipe()
# The holder is not a child (a child is refused first): a grandchild.
child = os.fork()
if child == 0:
    if os.fork() == 0:
        b.close()
        os.write(w, b"%d\n" % os.getpid())
        while True:
            time.sleep(60)
    os._exit(0)
os.waitpid(child, 0)
a.close()
holder = os.read(r, 32).decode().strip()
os.close(r)
os.close(w)
print("ready", holder, flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#;
    let (mut w, line) = python(script, "ready");
    let child: i32 = line.split(' ').nth(1).unwrap().parse().unwrap();
    // Killed by pid whatever happens.
    let _child = crimg_tests::PidGuard::new(child).unwrap();
    let message = expect_dump_refused(&mut w, "is a unix socket connected to socket:[");
    assert!(
        message.contains(&format!(
            "outside this process (held by pid {child}, outside the dumped tree)"
        )),
        "{message}"
    );
    w.send_line("x").unwrap();
    w.expect_line("alive");
}

/// `GET /` on `127.0.0.1:port`: the status line.
fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP server");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn python_http_server_answers_on_its_port_after_restore() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut command = std::process::Command::new("python3");
    command
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(scratch.path());
    let mut w = Workload::spawn_command("http.server", command).unwrap();
    // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
    let line = w.expect_line("Serving HTTP on");
    let port: u16 = line.split(' ').nth(5).unwrap().parse().unwrap();
    assert!(http_get(port).contains(" 200 "), "before the dump");
    let dump = bins
        .dump(w.pid(), &scratch.path().join("out"), false)
        .unwrap_or_else(|err| panic!("{err}\n{}", w.stderr_report()));
    w.wait_exit(LINE_TIMEOUT).unwrap();
    let mut restored = bins.restore("http.server (restored)", &dump.image).unwrap();
    // It prints nothing once back: wait until its listener is there (the
    // loader makes it in stage 1, before the switch), or it died.
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = restored.child().try_status() {
            panic!("the restore ended ({status}): {}", restored.stderr_report());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no listener on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = http_get(port);
    assert!(status.contains(" 200 "), "after the restore: {status:?}");
}

#[test]
fn a_listener_with_connections_waiting_is_refused_with_their_count() {
    crimg_tests::skip_unless_root!();
    let script = r#"
import socket, sys
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(8)
clients = [socket.create_connection(l.getsockname()) for _ in range(2)]
print("ready", l.getsockname()[1], flush=True)
for line in sys.stdin:
    print("alive", len([l.accept() for _ in clients]), flush=True)
"#;
    let (mut w, line) = python(script, "ready");
    let port = line.split(' ').nth(1).unwrap().to_owned();
    expect_dump_refused(
        &mut w,
        &format!(
            "is a TCP listener on 127.0.0.1:{port} with 2 connection(s) waiting to be accepted"
        ),
    );
    w.send_line("x").unwrap();
    assert_eq!(w.expect_line("alive"), "alive 2");
}

#[test]
fn datagrams_queued_on_a_bound_udp_socket_are_dropped_with_a_warning() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let script = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("127.0.0.1", 0))
u.sendto(b"queued", u.getsockname())
print("ready", u.getsockname()[1], flush=True)
for line in sys.stdin:
    u.setblocking(False)
    try:
        print("got", u.recv(64).decode(), flush=True)
    except BlockingIOError:
        print("got nothing", flush=True)
"#;
    let (mut w, line) = python(script, "ready");
    let port = line.split(' ').nth(1).unwrap().to_owned();
    let dump = bins
        .dump(w.pid(), &scratch.path().join("out"), false)
        .unwrap_or_else(|err| panic!("{err}\n{}", w.stderr_report()));
    let said = format!("{}{}", dump.output.stdout, dump.output.stderr);
    assert!(
        said.contains(&format!(
            "the datagrams queued on UDP socket 127.0.0.1:{port} are dropped"
        )),
        "{said}"
    );
    w.wait_exit(LINE_TIMEOUT).unwrap();
    let mut restored = bins.restore("python3 (restored)", &dump.image).unwrap();
    // Bound to its port again, and empty.
    restored.send_line("x").unwrap();
    assert_eq!(restored.expect_line("got"), "got nothing");
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .send_to(b"again", ("127.0.0.1", port.parse::<u16>().unwrap()))
        .unwrap();
    restored.send_line("x").unwrap();
    assert_eq!(restored.expect_line("got"), "got again");
}

#[test]
fn a_connected_udp_socket_is_refused_by_name() {
    crimg_tests::skip_unless_root!();
    let script = r#"
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect(("127.0.0.1", 9))
print("ready", u.getsockname()[1], flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#;
    let (mut w, line) = python(script, "ready");
    let port = line.split(' ').nth(1).unwrap().to_owned();
    expect_dump_refused(
        &mut w,
        &format!("is a UDP socket connected 127.0.0.1:{port} -> 127.0.0.1:9: not saved yet"),
    );
    w.send_line("x").unwrap();
    w.expect_line("alive");
}
