//! Spill files encrypted with a key that exists only in this process's memory. A spilled
//! transaction is plain row data (its masked columns masked already, its other columns not)
//! waiting on local disk for its commit; sealed, what is left on a disk, a backup or a
//! swapped-out volume after a crash is unreadable, and a spill the process did not write cannot
//! be read back in its place.
//!
//! A sealed file is a run of chunks, each `[plaintext length: u32 LE][AES-256-GCM ciphertext
//! and tag]`, sealed with a nonce of the file's number and the chunk's: the writer seals what
//! it holds whenever it is flushed, and the reader decrypts the chunk a read falls in, so Arrow's
//! IPC reader can seek in the file as in a plain one.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Plaintext bytes sealed at most per chunk.
const CHUNK: usize = 1 << 20;
/// The tag each chunk carries.
const TAG: usize = 16;

/// The key of one spill, random and held in memory only; each file it seals takes a number.
pub struct Sealer {
    key: LessSafeKey,
    files: AtomicU32,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(AES-256-GCM, key in memory)")
    }
}

impl Sealer {
    /// A sealer with a fresh random key.
    pub fn new() -> std::io::Result<Sealer> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("no random key for the spill"))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| std::io::Error::other("the spill key was refused"))?;
        bytes.fill(0);
        Ok(Sealer {
            key: LessSafeKey::new(key),
            files: AtomicU32::new(0),
        })
    }

    /// A writer sealing into `inner`; its number goes into every nonce, so no two files (nor
    /// two chunks) share one.
    pub fn writer<W: Write>(self: &Arc<Self>, inner: W) -> SealedWriter<W> {
        SealedWriter {
            sealer: self.clone(),
            file: self.files.fetch_add(1, Ordering::Relaxed),
            chunk: 0,
            started: false,
            buffer: Vec::new(),
            inner,
        }
    }

    /// A reader of a file [`Sealer::writer`] wrote: its chunks are found, not yet decrypted.
    pub fn reader<R: Read + Seek>(&self, mut inner: R) -> std::io::Result<SealedReader<'_, R>> {
        let mut header = [0u8; 4];
        inner.seek(SeekFrom::Start(0))?;
        inner.read_exact(&mut header)?;
        let file = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut chunks = Vec::new();
        let mut at = 4u64;
        let mut plain = 0u64;
        let end = inner.seek(SeekFrom::End(0))?;
        while at < end {
            let mut length = [0u8; 4];
            inner.seek(SeekFrom::Start(at))?;
            inner.read_exact(&mut length)?;
            let length = u64::from(u32::from_le_bytes(length));
            chunks.push(Chunk {
                plain_start: plain,
                length,
                at: at + 4,
            });
            plain += length;
            at += 4 + length + TAG as u64;
        }
        if at != end {
            return Err(std::io::Error::other("a spill file ends inside a chunk"));
        }
        Ok(SealedReader {
            sealer: self,
            file,
            chunks,
            length: plain,
            position: 0,
            cached: None,
            inner,
        })
    }

    fn nonce(file: u32, chunk: u64) -> Nonce {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&file.to_be_bytes());
        nonce[4..].copy_from_slice(&chunk.to_be_bytes());
        Nonce::assume_unique_for_key(nonce)
    }
}

/// Seals what is written into chunks (a chunk whenever [`CHUNK`] bytes are held, or on flush).
pub struct SealedWriter<W: Write> {
    sealer: Arc<Sealer>,
    file: u32,
    chunk: u64,
    /// Whether the file's number is written (its first four bytes).
    started: bool,
    buffer: Vec<u8>,
    inner: W,
}

impl<W: Write> SealedWriter<W> {
    fn seal(&mut self) -> std::io::Result<()> {
        if !self.started {
            self.inner.write_all(&self.file.to_le_bytes())?;
            self.started = true;
        }
        if self.buffer.is_empty() {
            return Ok(());
        }
        let length = u32::try_from(self.buffer.len())
            .map_err(|_| std::io::Error::other("a spill chunk over 4 GiB"))?;
        let nonce = Sealer::nonce(self.file, self.chunk);
        self.sealer
            .key
            .seal_in_place_append_tag(nonce, Aad::from(self.chunk.to_le_bytes()), &mut self.buffer)
            .map_err(|_| std::io::Error::other("sealing a spill chunk failed"))?;
        self.inner.write_all(&length.to_le_bytes())?;
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        self.chunk += 1;
        Ok(())
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let taken = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() >= CHUNK {
            self.seal()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() || !self.started {
            self.seal()?;
        }
        self.inner.flush()
    }
}

impl<W: Write> std::fmt::Debug for SealedWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWriter")
            .field("file", &self.file)
            .field("chunk", &self.chunk)
            .finish()
    }
}

/// Where one chunk's plaintext starts, how long it is, and where its ciphertext is.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    plain_start: u64,
    length: u64,
    at: u64,
}

/// Reads a sealed file as its plaintext, decrypting (and checking) one chunk at a time.
pub struct SealedReader<'a, R: Read + Seek> {
    sealer: &'a Sealer,
    file: u32,
    chunks: Vec<Chunk>,
    length: u64,
    position: u64,
    /// The chunk decrypted last: its index and plaintext.
    cached: Option<(usize, Vec<u8>)>,
    inner: R,
}

impl<R: Read + Seek> SealedReader<'_, R> {
    fn open(&mut self, index: usize) -> std::io::Result<()> {
        if self.cached.as_ref().is_some_and(|(i, _)| *i == index) {
            return Ok(());
        }
        let chunk = self.chunks[index];
        let mut sealed = vec![0u8; chunk.length as usize + TAG];
        self.inner.seek(SeekFrom::Start(chunk.at))?;
        self.inner.read_exact(&mut sealed)?;
        let number = index as u64;
        let plain = self
            .sealer
            .key
            .open_in_place(
                Sealer::nonce(self.file, number),
                Aad::from(number.to_le_bytes()),
                &mut sealed,
            )
            .map_err(|_| {
                std::io::Error::other("a spill chunk does not open with this process's key")
            })?;
        let length = plain.len();
        sealed.truncate(length);
        self.cached = Some((index, sealed));
        Ok(())
    }
}

impl<R: Read + Seek> Read for SealedReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.position >= self.length || out.is_empty() {
            return Ok(0);
        }
        let index = self
            .chunks
            .partition_point(|c| c.plain_start + c.length <= self.position);
        if index >= self.chunks.len() {
            return Ok(0);
        }
        self.open(index)?;
        let start = self.chunks[index].plain_start;
        let Some((_, plain)) = &self.cached else {
            return Ok(0);
        };
        let offset = (self.position - start) as usize;
        let n = out.len().min(plain.len() - offset);
        out[..n].copy_from_slice(&plain[offset..offset + n]);
        self.position += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for SealedReader<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.length.checked_add_signed(d),
            SeekFrom::Current(d) => self.position.checked_add_signed(d),
        };
        self.position = target.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of a spill file",
            )
        })?;
        Ok(self.position)
    }
}

impl<R: Read + Seek> std::fmt::Debug for SealedReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedReader")
            .field("file", &self.file)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn a_sealed_file_reads_back_anywhere_and_holds_no_plaintext() -> std::io::Result<()> {
        let sealer = Arc::new(Sealer::new()?);
        let text: Vec<u8> = (0..3 * CHUNK + 123)
            .map(|i| b"secret-value-"[i % 13])
            .collect();
        let mut file = Vec::new();
        {
            let mut writer = sealer.writer(&mut file);
            // small writes and flushes in the middle, as Arrow's writer makes them
            writer.write_all(&text[..10])?;
            writer.flush()?;
            writer.write_all(&text[10..])?;
            writer.flush()?;
        }
        assert!(!file.windows(13).any(|w| w == b"secret-value-"));
        let mut reader = sealer.reader(Cursor::new(&file))?;
        let mut back = Vec::new();
        reader.read_to_end(&mut back)?;
        assert_eq!(back, text);
        // a seek across chunks, as the IPC reader's to the footer
        reader.seek(SeekFrom::End(-20))?;
        let mut tail = [0u8; 20];
        reader.read_exact(&mut tail)?;
        assert_eq!(&tail[..], &text[text.len() - 20..]);
        reader.seek(SeekFrom::Start(CHUNK as u64 - 5))?;
        let mut across = [0u8; 10];
        reader.read_exact(&mut across)?;
        assert_eq!(&across[..], &text[CHUNK - 5..CHUNK + 5]);

        // another process's key (or a changed byte) does not open it
        let other = Sealer::new()?;
        let mut wrong = other.reader(Cursor::new(&file))?;
        assert!(wrong.read(&mut [0u8; 8]).is_err());
        let mut tampered = file.clone();
        tampered[10] ^= 1;
        let mut bad = sealer.reader(Cursor::new(&tampered))?;
        assert!(bad.read(&mut [0u8; 8]).is_err());
        Ok(())
    }
}
