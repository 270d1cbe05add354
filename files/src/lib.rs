//! Writing files so that a crash at any moment leaves either the old or the new version whole: card images, token keys, credentials.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Mode of files that hold secrets: read and write for the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Writes `contents` to `path` atomically: into a new temporary file beside it
/// (created with `mode` on Unix, so a secret is never readable by others, even
/// briefly), flushed to disk, renamed over `path`, and the directory flushed.
///
/// # Errors
/// The I/O error; the temporary file is removed and `path` is untouched.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    place_atomically(path, contents, mode, |temporary| {
        fs::rename(temporary, path)
    })
}

/// Creates `path` with `contents` atomically unless it exists: as
/// [`write_atomically`], but the temporary file is hard-linked to `path`
/// instead of renamed over it, so a file already there (or created meanwhile
/// by another process) is kept as it is. Returns whether this call created it.
///
/// # Errors
/// The I/O error; the temporary file is removed.
pub fn create_atomically(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    let mut created = false;
    place_atomically(path, contents, mode, |temporary| {
        match fs::hard_link(temporary, path) {
            Ok(()) => created = true,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        fs::remove_file(temporary)
    })?;
    Ok(created)
}

/// Writes `contents` into a new temporary file beside `path` with `mode`, lets
/// `put` move it into place, removes what is left of it on failure, and
/// flushes the directory.
fn place_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    put: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file")
    })?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let temporary = directory.join(format!(
        ".{}.{}-{:08x}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = write_new_file(&temporary, contents, mode).and_then(|()| put(&temporary));
    if let Err(error) = written {
        // Best effort: the temporary file may not exist, and the write error matters more.
        let _ = fs::remove_file(&temporary);
        return Err(error);
    }
    sync_directory(directory)
}

/// Creates `path` (which must not exist) with `mode` and flushes `contents` to disk.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Flushes a directory entry change (the rename) to disk.
#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

/// Windows cannot open a directory as a file; its rename is flushed with the file system.
#[cfg(not(unix))]
fn sync_directory(_directory: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.toml");
        write_atomically(&path, b"old", PRIVATE_FILE_MODE).unwrap();
        write_atomically(&path, b"new", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn create_keeps_a_file_already_there_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        assert!(create_atomically(&path, b"first", PRIVATE_FILE_MODE).unwrap());
        assert!(!create_atomically(&path, b"second", PRIVATE_FILE_MODE).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(create_atomically(Path::new("/"), b"x", PRIVATE_FILE_MODE).is_err());
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept");
        write_atomically(&path, b"old", PRIVATE_FILE_MODE).unwrap();
        // A directory where the file should be renamed to makes the rename fail.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(write_atomically(&blocked, b"new", PRIVATE_FILE_MODE).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(write_atomically(Path::new("/"), b"x", PRIVATE_FILE_MODE).is_err());
    }
}
