//! One append-only log file on the shard's io_uring (glommio's buffered files: O_DIRECT
//! would need every write aligned, and not every file system a data directory lands on
//! has it). A batch is one write and one `fdatasync`; a rewrite (the compacted log) goes to
//! a new file that replaces the old one by rename only once it is durable, so a crash at
//! any point leaves either the old log or the new one, never a mix.

use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, Directory, OpenOptions};

use super::record::FILE_MAGIC;

fn io_error(error: glommio::GlommioError<()>) -> io::Error {
    io::Error::other(error.to_string())
}

pub struct AppendLog {
    file: BufferedFile,
    path: PathBuf,
    len: u64,
}

impl AppendLog {
    /// Opens `path` to append after its first `valid_bytes` (what recovery read as good;
    /// anything after is cut), or creates it.
    pub async fn open(path: &Path, valid_bytes: u64) -> io::Result<AppendLog> {
        let file = OpenOptions::new().read(true).write(true).create(true).buffered_open(path).await.map_err(io_error)?;
        let mut log = AppendLog { file, path: path.to_path_buf(), len: valid_bytes };
        if valid_bytes < FILE_MAGIC.len() as u64 {
            log.file.truncate(0).await.map_err(io_error)?;
            log.len = 0;
            log.write_all(FILE_MAGIC.to_vec()).await?;
            log.file.fdatasync().await.map_err(io_error)?;
            sync_parent(path).await?;
        } else if log.file.file_size().await.map_err(io_error)? > valid_bytes {
            log.file.truncate(valid_bytes).await.map_err(io_error)?;
            log.file.fdatasync().await.map_err(io_error)?;
        }
        Ok(log)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= FILE_MAGIC.len() as u64
    }

    /// Appends `records` and makes them durable.
    pub async fn append(&mut self, records: Vec<u8>) -> io::Result<()> {
        let start = self.len;
        if let Err(error) = self.write_all(records).await {
            // Whatever part of the batch landed is cut, so the next batch follows good records.
            self.len = start;
            let _ = self.file.truncate(start).await;
            return Err(error);
        }
        self.file.fdatasync().await.map_err(io_error)
    }

    /// Replaces the whole log with `records` (a compacted log): written to a new file,
    /// made durable, then renamed over the old one.
    pub async fn rewrite(&mut self, records: Vec<u8>) -> io::Result<()> {
        let mut fresh_path = self.path.clone().into_os_string();
        fresh_path.push(".new");
        let fresh_path = PathBuf::from(fresh_path);
        let fresh = BufferedFile::create(&fresh_path).await.map_err(io_error)?;
        let mut fresh = AppendLog { file: fresh, path: fresh_path, len: 0 };
        let mut contents = FILE_MAGIC.to_vec();
        contents.extend_from_slice(&records);
        fresh.write_all(contents).await?;
        fresh.file.fdatasync().await.map_err(io_error)?;
        fresh.file.rename(&self.path).await.map_err(io_error)?;
        sync_parent(&self.path).await?;
        let old = std::mem::replace(self, AppendLog { file: fresh.file, path: self.path.clone(), len: fresh.len });
        let _ = old.file.close().await;
        Ok(())
    }

    /// One write of the whole buffer. A short write (the disk filling up) is an error: the
    /// caller cuts what landed, and the batch is not acknowledged as stored.
    async fn write_all(&mut self, bytes: Vec<u8>) -> io::Result<()> {
        let wanted = bytes.len();
        let written = self.file.write_at(bytes, self.len).await.map_err(io_error)?;
        self.len += written as u64;
        if written < wanted {
            return Err(io::Error::new(io::ErrorKind::StorageFull, format!("{}: wrote {written} of {wanted} bytes", self.path.display())));
        }
        Ok(())
    }

    pub async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io_error)
    }
}

/// Makes a file's creation or rename durable: the directory entry is data too.
async fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let directory = Directory::open(parent).await.map_err(io_error)?;
    directory.sync().await.map_err(io_error)?;
    directory.close().await.map_err(io_error)
}
