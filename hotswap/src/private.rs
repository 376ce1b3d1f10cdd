//! Who may talk to the control socket: it lives in a directory only ringside's user can write,
//! is created mode 0600, and every connection's peer is checked with SO_PEERCRED before a single
//! descriptor leaves the process. The file mode keeps other users out; the credential check
//! still refuses a peer that got through anyway (one holding CAP_DAC_OVERRIDE under another uid).

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::HandoffError;

/// The control socket's file mode: owner read and write (connect needs write).
pub const SOCKET_MODE: u32 = 0o600;
/// The mode of a directory ringside creates for its control socket.
pub const DIR_MODE: u32 = 0o700;

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The peer of a Unix socket as the kernel recorded it at connect (SO_PEERCRED).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_cred(sock: &UnixStream) -> std::io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live local of that size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// The pid of the process at the other end of a Unix socket, for logs.
pub fn peer_pid(sock: &UnixStream) -> Option<i32> {
    peer_cred(sock).ok().map(|c| c.pid).filter(|&p| p > 0)
}

/// The peer's credentials when it runs as our own effective uid; [`HandoffError::ForeignPeer`]
/// otherwise. Root gets no exception: a ringside running as another user hands its sockets to
/// that user's processes only.
pub fn check_peer(sock: &UnixStream) -> Result<PeerCred, HandoffError> {
    let cred = peer_cred(sock)?;
    let ours = euid();
    if cred.uid != ours {
        return Err(HandoffError::ForeignPeer {
            pid: cred.pid,
            uid: cred.uid,
            ours,
        });
    }
    Ok(cred)
}

/// Checks that only this process's user (or root) can write `dir`: owned by our euid or root,
/// not writable by group or others. `symlink_ok`: whether `dir` itself may be a symbolic link
/// (false for a directory ringside created in a shared place such as /tmp, where anybody could
/// have planted one).
pub fn check_dir(dir: &Path, symlink_ok: bool) -> Result<(), HandoffError> {
    let unsafe_dir = |why: String| HandoffError::UnsafeDir {
        dir: dir.to_path_buf(),
        why,
    };
    let link = std::fs::symlink_metadata(dir).map_err(|e| unsafe_dir(e.to_string()))?;
    if link.file_type().is_symlink() && !symlink_ok {
        return Err(unsafe_dir("is a symbolic link".into()));
    }
    let meta = std::fs::metadata(dir).map_err(|e| unsafe_dir(e.to_string()))?;
    if !meta.is_dir() {
        return Err(unsafe_dir("is not a directory".into()));
    }
    let ours = euid();
    if meta.uid() != ours && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "is owned by uid {}, not by ringside's uid {ours} (or root)",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "is writable by {} (mode {mode:o}): another user could replace the socket",
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            }
        )));
    }
    Ok(())
}

/// Creates `dir` (mode [`DIR_MODE`]) when it is missing, then [`check_dir`]s it (no symlink).
pub fn private_dir(dir: &Path) -> Result<(), HandoffError> {
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(HandoffError::UnsafeDir {
                dir: dir.to_path_buf(),
                why: format!("cannot create it: {e}"),
            })
        }
    }
    check_dir(dir, false)
}

/// Binds a listening socket at `path`, mode [`SOCKET_MODE`], in a directory that passes
/// [`check_dir`]. The socket is bound under a temporary name, given its mode, then renamed over
/// `path`: no moment exists where `path` answers with a wider mode, and a socket already at
/// `path` (a predecessor's) is replaced in one step.
pub fn bind_private(path: &Path) -> Result<UnixListener, HandoffError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    check_dir(&dir, true)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hotswap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn socket_is_0600_and_replaces_an_old_one() {
        let d = temp("bind");
        private_dir(&d).unwrap();
        let mode = std::fs::metadata(&d).unwrap().mode() & 0o7777;
        assert_eq!(mode, DIR_MODE);
        let p = d.join("c.sock");
        let _old = bind_private(&p).unwrap();
        let _new = bind_private(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
        assert_eq!(mode, SOCKET_MODE);
        let c = UnixStream::connect(&p).unwrap();
        assert_eq!(check_peer(&c).unwrap().uid, euid());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn writable_dirs_and_symlinks_are_refused() {
        let d = temp("wide");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = bind_private(&d.join("c.sock")).unwrap_err().to_string();
        assert!(e.contains("writable by everyone (mode 1777)"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(check_dir(&d, true).is_err());
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_dir(&d, true).unwrap();
        let link = temp("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(check_dir(&link, true).is_ok());
        let e = private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
