//! A private `dockerd`: its own socket, data and exec roots in a temp dir, no iptables, no
//! bridge, the vfs storage driver, and a busybox image `bb`; stopped by pid on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::{docker, skip, Run};

/// A running private daemon.
pub struct Dockerd {
    dir: TempDir,
    child: Child,
    /// `unix://...` of its socket.
    pub host: String,
}

impl Dockerd {
    /// Starts a daemon and imports `bb`, or returns `None` (after [`skip`]) when this machine
    /// cannot run one (no `dockerd`, no `busybox`, not root).
    pub async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// As [`Dockerd::start`], with more `dockerd` arguments (more `-H`, TLS files).
    pub async fn start_with(extra: &[String]) -> Option<Self> {
        let Some(dockerd) = find(&["/usr/sbin/dockerd", "/usr/bin/dockerd"]) else {
            skip("no dockerd (apt-get install docker.io)");
            return None;
        };
        let Some(busybox) = find(&["/bin/busybox", "/usr/bin/busybox"]) else {
            skip("no busybox (apt-get install busybox-static)");
            return None;
        };
        if !is_root() {
            skip("dockerd needs root");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("dkd").tempdir_in("/tmp").unwrap();
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new(dockerd)
            .arg("--iptables=false")
            .arg("--ip-masq=false")
            .arg("--bridge=none")
            .arg("--storage-driver=vfs")
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        let host = format!("unix://{}", socket.display());
        let daemon = Self { dir, child, host };
        daemon.wait_ready().await;
        daemon.import_busybox(&busybox).await;
        Some(daemon)
    }

    /// Runs `docker -H SOCKET ARGS...` straight at the daemon.
    pub async fn docker(&self, args: &[&str]) -> Run {
        docker(&self.host, args, None).await
    }

    /// The daemon's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let run = self.docker(&["version", "--format", "{{.Server.APIVersion}}"]).await;
            if run.code == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd not ready in {READY_LIMIT:?}: {}",
                self.log()
            );
            // Waiting on an external daemon's socket: there is nothing to be told by.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn import_busybox(&self, busybox: &Path) {
        let root = self.dir.path().join("rootfs");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy(busybox, bin.join("busybox")).unwrap();
        // The applets are hard links to the copy. The copy itself is never run: a process
        // forked by a test in another thread while the copy was open for writing would make
        // exec fail with "Text file busy".
        let listed = Command::new(busybox).arg("--list").output().unwrap();
        assert!(listed.status.success(), "busybox --list failed");
        for applet in String::from_utf8_lossy(&listed.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
                std::fs::hard_link(bin.join("busybox"), bin.join(applet)).unwrap();
            }
        }
        let tar = self.dir.path().join("rootfs.tar");
        let tarred = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(tarred.success(), "tar failed");
        let tar = tar.display().to_string();
        self.docker(&["import", &tar, "bb"]).await.ok();
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.child.id()) else { return };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|path| path.exists())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status.lines().any(|line| {
            line.strip_prefix("Uid:").is_some_and(|ids| ids.split_whitespace().nth(1) == Some("0"))
        })
    })
}

const READY_LIMIT: Duration = Duration::from_secs(30);
const STOP_LIMIT: Duration = Duration::from_secs(20);
