//! Files and directories fleet keeps on disk: the controller's data dir (the SQLite store, which
//! holds node keys in plain text, and the first operator token), the agent's (spool, command
//! journal with command output, events log, log-tail positions) and operator keys.
//!
//! Whatever the umask of the shell that started fleet, they are made private: directories
//! [`DIR_MODE`] (0700), files [`FILE_MODE`] (0600), the mode given when each is created. A store
//! or data dir that other users can read, or that anyone but its owner can write, is refused at
//! start with the `chmod` that fixes it ([`check_tree`], [`check_file`]): an install made by an
//! earlier version (under umask 022, everything 0755/0644) stops there rather than keep leaking.
//!
//! The long-running modes also set the umask to 077 ([`restrict_umask`]) so that a file nobody
//! thought of (SQLite's own `-wal` and `-shm` among them) is private too; commands and plugins
//! the agent runs get the umask fleet was started with back ([`restore_umask`]), so what they
//! create is as it would be without fleet.
//!
//! This module knows nothing of what the files hold, and does no I/O but the file system's.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// The mode of every directory fleet creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file fleet creates.
pub const FILE_MODE: u32 = 0o600;
/// Bits that make a file or directory unfit for secrets: any access by other users, or writing
/// by the group (which could replace a file). Reading by the group is the operator's choice
/// (`deploy/` gives the data dirs to the `fleet` group, 0750), so it is not refused.
pub const REFUSED_BITS: u32 = 0o027;
/// Most exposed paths a refusal names; the `chmod -R` it suggests fixes them all.
const NAMED_MAX: usize = 3;

/// Creates `dir` and any missing parents, each [`DIR_MODE`]. An existing directory keeps its
/// mode ([`check_tree`] judges it).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// `OpenOptions` whose files are created [`FILE_MODE`]: the private `OpenOptions::new()`.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates (or truncates) `path` for writing, private: the private `File::create`. A file that
/// already existed with a wider mode (a temporary file left by an earlier version) is narrowed,
/// since `mode` applies only to a file the call creates.
pub fn create(path: &Path) -> io::Result<File> {
    let file = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    narrow(&file)?;
    Ok(file)
}

/// Narrows an open file to [`FILE_MODE`] if anyone but its owner may touch it.
pub fn narrow(file: &File) -> io::Result<()> {
    if file.metadata()?.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// The umask before [`restrict_umask`], for children; `u32::MAX` while unchanged.
static STARTED_WITH: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets the process umask to 077 (the long-running modes call it first thing) and remembers the
/// one fleet was started with for [`restore_umask`].
pub fn restrict_umask() {
    let before = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    // Only the first call's "before" is the umask fleet was started with.
    let _ = STARTED_WITH.compare_exchange(
        u32::MAX,
        before.as_raw_mode(),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
}

/// Gives a child the umask fleet was started with (if [`restrict_umask`] changed it): a command
/// or plugin the agent runs creates files as it would outside fleet.
pub fn restore_umask(command: &mut tokio::process::Command) {
    let started_with = STARTED_WITH.load(Ordering::SeqCst);
    if started_with == u32::MAX {
        return;
    }
    let mask = rustix::fs::Mode::from_raw_mode(started_with);
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: umask(2) is one (rustix makes it a bare system call), and nothing here
    // allocates or takes a lock.
    unsafe {
        command.pre_exec(move || {
            rustix::process::umask(mask);
            Ok(())
        });
    }
}

/// Why a store or data dir is refused.
#[derive(Debug, thiserror::Error)]
pub enum NotPrivate {
    /// One path is open to others.
    #[error("{what} {} is {how} (mode {mode:04o}); run `chmod {fix:o} {}` and start again", .path.display(), quoted(.path))]
    One {
        what: String,
        path: PathBuf,
        how: String,
        mode: u32,
        fix: u32,
    },
    /// Several paths under `root` are.
    #[error(
        "{what} {} is open to other users: {}; run `chmod -R g-w,o-rwx {}` and start again",
        .root.display(), listed(.exposed, *.more), quoted(.root)
    )]
    Several {
        what: String,
        root: PathBuf,
        exposed: Vec<Exposed>,
        more: usize,
    },
    #[error("cannot check who may read {}: {source}", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
}

/// One path whose mode has [`REFUSED_BITS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    pub path: PathBuf,
    pub mode: u32,
    pub dir: bool,
}

/// What the mode lets others do, in words: "readable by other users", "readable and writable
/// by other users and writable by its group", …
fn how(mode: u32) -> String {
    let others: Vec<&str> = [(0o004, "readable"), (0o002, "writable")]
        .into_iter()
        .filter(|(bit, _)| mode & bit != 0)
        .map(|(_, word)| word)
        .collect();
    let mut parts = Vec::new();
    if !others.is_empty() {
        parts.push(format!("{} by other users", others.join(" and ")));
    }
    if mode & 0o020 != 0 {
        parts.push("writable by its group".to_owned());
    }
    if parts.is_empty() {
        // Only the execute (search) bit for others.
        parts.push("open to other users".to_owned());
    }
    parts.join(" and ")
}

fn quoted(path: &Path) -> String {
    let text = path.display().to_string();
    shlex::try_quote(&text)
        .map(|q| q.into_owned())
        .unwrap_or(text)
}

fn listed(exposed: &[Exposed], more: usize) -> String {
    let mut parts: Vec<String> = exposed
        .iter()
        .map(|e| {
            format!(
                "{} is {} (mode {:04o})",
                e.path.display(),
                how(e.mode),
                e.mode
            )
        })
        .collect();
    if more > 0 {
        parts.push(format!("{more} more"));
    }
    parts.join(", ")
}

fn mode_of(path: &Path, follow: bool) -> Result<Option<std::fs::Metadata>, NotPrivate> {
    let read = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match read {
        Ok(meta) => Ok(Some(meta)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NotPrivate::Unreadable {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Refuses `file` (if it exists: the store, an operator token) when it is open to others.
/// `what` names it for the operator ("the store").
pub fn check_file(file: &Path, what: &str) -> Result<(), NotPrivate> {
    let Some(meta) = mode_of(file, true)? else {
        return Ok(());
    };
    let mode = meta.mode() & 0o7777;
    if mode & REFUSED_BITS == 0 {
        return Ok(());
    }
    Err(NotPrivate::One {
        what: what.to_owned(),
        path: file.to_owned(),
        how: how(mode),
        mode,
        fix: if meta.is_dir() { DIR_MODE } else { FILE_MODE },
    })
}

/// Refuses the data dir `root` when it, or anything in it, is open to others. The whole tree is
/// fleet's (that is what a data dir is); symbolic links are not followed.
pub fn check_tree(root: &Path, what: &str) -> Result<(), NotPrivate> {
    let mut exposed = Vec::new();
    let mut count = 0;
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let Some(meta) = mode_of(&path, false)? else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.mode() & 0o7777;
        if mode & REFUSED_BITS != 0 {
            count += 1;
            if exposed.len() < NAMED_MAX {
                exposed.push(Exposed {
                    path: path.clone(),
                    mode,
                    dir: meta.is_dir(),
                });
            }
        }
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|source| NotPrivate::Unreadable {
                path: path.clone(),
                source,
            })?;
            let mut children = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| NotPrivate::Unreadable {
                    path: path.clone(),
                    source,
                })?;
                children.push(entry.path());
            }
            // Named in a stable order: the root first, then its entries by name.
            children.sort_unstable_by(|a, b| b.cmp(a));
            pending.extend(children);
        }
    }
    match exposed.len() {
        0 => Ok(()),
        1 if count == 1 => {
            let Exposed { path, mode, dir } = exposed.remove(0);
            Err(NotPrivate::One {
                what: if path == root {
                    what.to_owned()
                } else {
                    format!("in {what} {},", root.display())
                },
                how: how(mode),
                fix: if dir { DIR_MODE } else { FILE_MODE },
                path,
                mode,
            })
        }
        _ => Err(NotPrivate::Several {
            what: what.to_owned(),
            root: root.to_owned(),
            more: count - exposed.len(),
            exposed,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::Permissions;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    /// A temporary directory of the owner's only (tempfile makes them with the umask's mode).
    fn private_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o700);
        dir
    }

    #[test]
    fn created_private_whatever_the_mode_of_a_file_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir(&nested).unwrap();
        for d in [dir.path().join("a"), nested.clone()] {
            assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        }
        let left = nested.join("left.tmp");
        std::fs::write(&left, "old").unwrap();
        chmod(&left, 0o644);
        create(&left).unwrap();
        assert_eq!(std::fs::metadata(&left).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_private_tree_passes_and_group_reading_is_allowed() {
        let dir = private_tempdir();
        create_dir(&dir.path().join("spool")).unwrap();
        create(&dir.path().join("spool/1.json")).unwrap();
        assert!(check_tree(dir.path(), "the data dir").is_ok());
        chmod(dir.path(), 0o750);
        chmod(&dir.path().join("spool/1.json"), 0o640);
        assert!(check_tree(dir.path(), "the data dir").is_ok());
        // Missing is fine: it will be made private.
        assert!(check_tree(&dir.path().join("nothing"), "the data dir").is_ok());
        assert!(check_file(&dir.path().join("nothing.db"), "the store").is_ok());
    }

    #[test]
    fn one_exposed_file_is_named_with_its_chmod() {
        let dir = private_tempdir();
        let db = dir.path().join("fleet.db");
        create(&db).unwrap();
        chmod(&db, 0o644);
        let err = check_file(&db, "the store").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "the store {} is readable by other users (mode 0644); run `chmod 600 {}` and start again",
                db.display(),
                db.display()
            )
        );
        let err = check_tree(dir.path(), "the data dir")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fleet.db is readable by other users (mode 0644)"),
            "{err}"
        );
        assert!(
            err.contains(&format!("`chmod 600 {}`", db.display())),
            "{err}"
        );
        chmod(&db, 0o660);
        let err = check_file(&db, "the store").unwrap_err().to_string();
        assert!(
            err.contains("is writable by its group (mode 0660)"),
            "{err}"
        );
        chmod(&db, 0o666);
        let err = check_file(&db, "the store").unwrap_err().to_string();
        assert!(
            err.contains(
                "is readable and writable by other users and writable by its group (mode 0666)"
            ),
            "{err}"
        );
        chmod(&db, 0o601);
        let err = check_file(&db, "the store").unwrap_err().to_string();
        assert!(err.contains("is open to other users (mode 0601)"), "{err}");
    }

    #[test]
    fn several_exposed_paths_get_one_recursive_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        create_dir(&root.join("spool")).unwrap();
        for name in ["instance", "seq", "spool/1.json", "spool/2.json"] {
            create(&root.join(name)).unwrap();
            chmod(&root.join(name), 0o644);
        }
        chmod(&root, 0o755);
        let err = check_tree(&root, "the agent's data dir")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "the agent's data dir {} is open to other users: {} is readable by other users (mode 0755), ",
                root.display(),
                root.display()
            )),
            "{err}"
        );
        assert!(err.contains(", 2 more; "), "{err}");
        assert!(
            err.ends_with(&format!(
                "run `chmod -R g-w,o-rwx {}` and start again",
                root.display()
            )),
            "{err}"
        );
        // What it says fixes it.
        let status = std::process::Command::new("chmod")
            .args(["-R", "g-w,o-rwx"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(status.success());
        assert!(check_tree(&root, "the agent's data dir").is_ok());
    }
}
