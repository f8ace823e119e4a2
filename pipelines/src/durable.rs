//! Files that are whole or absent after a crash or power loss: written beside their place,
//! flushed to disk, renamed into place, and the directory flushed so the rename holds.

use std::io::Write;
use std::path::Path;

/// The hidden name a file is written under before it takes `path`'s place.
fn part_of(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.part"))
}

/// Flushes `dir`'s entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `data` to `path` so that `path` holds either what it held before or all of `data`.
pub fn write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let part = part_of(path);
    let written = (|| {
        let mut file = std::fs::File::create(&part)?;
        file.write_all(data)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    rename(&part, path)
}

/// Moves the finished file `from` to `to`: its contents flushed first, the directory after.
pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::File::open(from)?.sync_all()?;
    std::fs::rename(from, to)?;
    match to.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_replaced_whole_and_nothing_is_left_beside_it() {
        let dir = std::env::temp_dir().join(format!("tiercast-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.json");
        write(&path, b"first").unwrap();
        write(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["r.json"]);
        // A place that cannot be written leaves nothing behind.
        assert!(write(&dir.join("missing/r.json"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
