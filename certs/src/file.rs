//! Reading and writing certificate and key files, keeping keys private.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{LoadError, SaveError};

/// Reads a file, telling a missing file apart from other failures.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    let file = open(path)?;
    read_all(path, file)
}

/// Reads a private key file, refusing one that group or others can read.
pub(crate) fn read_private(path: &Path) -> Result<Vec<u8>, LoadError> {
    let file = open(path)?;
    // Checked on the open file, so the file read is the file checked.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata =
            file.metadata().map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(LoadError::KeyPermissions { path: path.to_owned(), mode });
        }
    }
    read_all(path, file)
}

/// Creates `dir` (and its parents) if missing; new directories are private to the owner.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), SaveError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| SaveError::CreateDir { path: dir.to_owned(), source })
}

/// Fails with [`SaveError::Exists`] if any of `paths` exists and `force` is not set.
///
/// Checked for all files before writing any, so a refused save writes nothing.
pub(crate) fn check_absent(paths: &[&Path], force: bool) -> Result<(), SaveError> {
    if force {
        return Ok(());
    }
    for path in paths {
        // symlink_metadata: a dangling symlink is still something we would overwrite.
        if fs::symlink_metadata(path).is_ok() {
            return Err(SaveError::Exists { path: path.to_path_buf() });
        }
    }
    Ok(())
}

/// Writes `contents` to `path`; a `private` file gets mode 0600 from its creation on.
///
/// Without `force` the file is created exclusively and an existing file is an error. With `force`
/// the contents go to a new temporary file in the same directory that is then renamed over
/// `path`, so the old file's mode is not inherited and readers never see a partial file.
pub(crate) fn write(
    path: &Path,
    contents: &[u8],
    private: bool,
    force: bool,
) -> Result<(), SaveError> {
    let write_error = |source| SaveError::Write { path: path.to_owned(), source };
    if !force {
        return match create_new(path, contents, private) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                Err(SaveError::Exists { path: path.to_owned() })
            }
            result => result.map_err(write_error),
        };
    }
    let temporary = temporary_path(path);
    create_new(&temporary, contents, private).and_then(|()| fs::rename(&temporary, path)).map_err(
        |error| {
            let _ = fs::remove_file(&temporary);
            write_error(error)
        },
    )
}

fn open(path: &Path) -> Result<File, LoadError> {
    File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LoadError::Missing { path: path.to_owned() },
        _ => LoadError::Read { path: path.to_owned(), source },
    })
}

fn read_all(path: &Path, file: File) -> Result<Vec<u8>, LoadError> {
    let mut bytes = Vec::new();
    // Certificate files are small; a bigger one is not ours.
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| LoadError::Read { path: path.to_owned(), source })?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(LoadError::Read {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "file is larger than 1 MiB"),
        });
    }
    Ok(bytes)
}

/// Creates `path` exclusively (never following or replacing an existing file) and fills it.
fn create_new(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The mode applies at creation, so the key is never readable by others, even briefly.
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path)?;
    let result = file.write_all(contents).and_then(|()| file.sync_all());
    if result.is_err() {
        drop(file);
        let _ = fs::remove_file(path);
    }
    result
}

fn temporary_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{count}.tmp", std::process::id()))
}

/// Largest certificate or key file read.
const MAX_FILE_LEN: u64 = 1024 * 1024;
