//! Packing snapshot files for storage: optional zstd compression, then optional age encryption.
//!
//! The layout is siderolabs/talos-backup's: `X.snapshot` → `X.snapshot.zst` → `X.snapshot.zst.age`,
//! so standard tools undo it (`age -d -i key.txt X.snapshot.zst.age | zstd -d > X.snapshot`), and
//! talos-backup's files unpack here. Encryption is age v1 to X25519 recipients (`age1…`).
//!
//! Everything streams through fixed-size buffers, so memory stays constant for any file size.
//! Unpacking recognises the layers by their magic bytes, not by the file name, and names the
//! layers it removed.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Recipients;

/// zstd level 3 is zstd's (and talos-backup's) default: most of the gain for little CPU.
pub const ZSTD_LEVEL: i32 = 3;
const BUF: usize = 1 << 20;
const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";
const AGE_ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
const ZSTD_MAGIC: &[u8] = b"\x28\xb5\x2f\xfd";

/// One storage layer around a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Zstd,
    Age,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Layer::Zstd => "zstd",
            Layer::Age => "age",
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Layer::Zstd => ".zst",
            Layer::Age => ".age",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `age → zstd` style list of layers, outermost first.
pub fn describe(layers: &[Layer]) -> String {
    if layers.is_empty() {
        "none".into()
    } else {
        layers
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>()
            .join(" → ")
    }
}

#[derive(Debug, Error)]
pub enum PackError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "it is encrypted with age and no identity was given: pass --identity FILE or set backup.identity_file"
    )]
    NoIdentity,
    #[error(
        "none of the identities in {} ({}) can decrypt it: it was encrypted to other recipients",
        path.display(),
        describe_recipients(recipients)
    )]
    WrongIdentity {
        path: PathBuf,
        recipients: Vec<String>,
    },
    /// The age layer opened with the identity but does not authenticate: tampering, bit rot, or
    /// a header rewritten for another key.
    #[error(
        "the age-encrypted data does not decrypt ({cause}): it is damaged, or it was encrypted to another key than the identity in {} ({})",
        path.display(),
        describe_recipients(recipients)
    )]
    Damaged {
        path: PathBuf,
        recipients: Vec<String>,
        cause: String,
    },
    #[error("it is ASCII-armored age; dearmor it first (`age -d` reads it directly)")]
    Armored,
    #[error("it is not a readable age file: {0}")]
    Age(String),
    #[error("cannot use the age identity file {}: {message}", path.display())]
    Identity { path: PathBuf, message: String },
}

/// Which layers to add when storing a snapshot.
#[derive(Clone, Default)]
pub struct Packing {
    pub compress: bool,
    /// Encrypt to these recipients; empty means no encryption.
    pub recipients: Recipients,
}

impl fmt::Debug for Packing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packing")
            .field("compress", &self.compress)
            .field("recipients", &self.recipients.len())
            .finish()
    }
}

impl Packing {
    /// Layers in the order they are applied (innermost first), which is also the order of the
    /// file extensions.
    pub fn layers(&self) -> Vec<Layer> {
        let mut v = Vec::new();
        if self.compress {
            v.push(Layer::Zstd);
        }
        if !self.recipients.is_empty() {
            v.push(Layer::Age);
        }
        v
    }

    pub fn is_plain(&self) -> bool {
        self.layers().is_empty()
    }

    /// `etcd-….snapshot` → `etcd-….snapshot.zst.age`.
    pub fn file_name(&self, base: &str) -> String {
        let mut s = base.to_owned();
        for l in self.layers() {
            s.push_str(l.extension());
        }
        s
    }
}

/// Splits `X.snapshot.zst.age` into `X.snapshot` and its layers (in extension order).
pub fn split_name(name: &str) -> (&str, Vec<Layer>) {
    let mut base = name;
    let mut layers = Vec::new();
    loop {
        if let Some(b) = base
            .strip_suffix(".age")
            .filter(|_| !layers.contains(&Layer::Age))
        {
            base = b;
            layers.insert(0, Layer::Age);
        } else if let Some(b) = base
            .strip_suffix(".zst")
            .filter(|_| !layers.contains(&Layer::Zstd))
        {
            base = b;
            layers.insert(0, Layer::Zstd);
        } else {
            return (base, layers);
        }
    }
}

/// The outermost layer of a stream, from its first bytes.
pub fn sniff(head: &[u8]) -> Option<Layer> {
    if head.starts_with(AGE_MAGIC) || head.starts_with(AGE_ARMOR) {
        Some(Layer::Age)
    } else if head.starts_with(ZSTD_MAGIC) {
        Some(Layer::Zstd)
    } else {
        None
    }
}

/// The outermost layer of a file, from its first bytes.
pub fn sniff_file(path: &Path) -> io::Result<Option<Layer>> {
    let mut head = [0u8; 34];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(sniff(&head[..n]))
}

/// `recipient age1…` / `recipients age1…, age1…`: which public keys an identity file answers
/// to, so a user can compare them with `backup.recipients`.
fn describe_recipients(r: &[String]) -> String {
    match r {
        [] => "no X25519 recipient".to_owned(),
        [one] => format!("recipient {one}"),
        many => format!("recipients {}", many.join(", ")),
    }
}

/// The identities of one age identity file (never printed: they are secret keys).
pub struct Identities {
    path: PathBuf,
    ids: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// The public keys of the X25519 identities (safe to print).
    recipients: Vec<String>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identities({}, {} keys)",
            self.path.display(),
            self.ids.len()
        )
    }
}

impl Identities {
    pub fn load(path: &Path) -> Result<Self, PackError> {
        let err = |message: String| PackError::Identity {
            path: path.to_path_buf(),
            message,
        };
        // A private key others can read is no longer private: refuse it, like ssh does.
        if let Ok(Some(mode)) = crate::fsutil::exposed_mode(path) {
            return Err(err(format!(
                "it is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`",
                path.display()
            )));
        }
        let file = age::IdentityFile::from_file(path.to_string_lossy().into_owned())
            .map_err(|e| err(e.to_string()))?;
        let ids = file.into_identities().map_err(|e| err(e.to_string()))?;
        if ids.is_empty() {
            return Err(err(
                "it holds no identity (expected AGE-SECRET-KEY-1… lines, as age-keygen writes)"
                    .into(),
            ));
        }
        // The public halves, for messages; the secret lines are parsed again only for this.
        let recipients = std::fs::read_to_string(path)
            .map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse::<age::x25519::Identity>().ok())
                    .map(|id| id.to_public().to_string())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            ids,
            recipients,
        })
    }

    /// What a failed decryption with these identities means, in the user's terms.
    fn decrypt_error(&self, e: age::DecryptError) -> PackError {
        match e {
            age::DecryptError::NoMatchingKeys => PackError::WrongIdentity {
                path: self.path.clone(),
                recipients: self.recipients.clone(),
            },
            // A header that parses but does not authenticate: changed after it was written.
            age::DecryptError::InvalidMac | age::DecryptError::DecryptionFailed => {
                self.damaged(e.to_string())
            }
            other => PackError::Age(other.to_string()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `age1…` recipients these identities decrypt.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    fn damaged(&self, cause: String) -> PackError {
        PackError::Damaged {
            path: self.path.clone(),
            recipients: self.recipients.clone(),
            cause,
        }
    }
}

/// Packs `input` into `out`; returns the number of input bytes read and the writer.
pub fn pack<R: Read, W: Write>(input: R, out: W, packing: &Packing) -> io::Result<(u64, W)> {
    let mut input = BufReader::with_capacity(BUF, input);
    let encryptor = if packing.recipients.is_empty() {
        None
    } else {
        Some(
            age::Encryptor::with_recipients(
                packing.recipients.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(io::Error::other)?,
        )
    };
    match (packing.compress, encryptor) {
        (false, None) => {
            let mut out = out;
            let n = io::copy(&mut input, &mut out)?;
            Ok((n, out))
        }
        (true, None) => {
            let mut z = zstd::Encoder::new(out, ZSTD_LEVEL)?;
            let n = io::copy(&mut input, &mut z)?;
            Ok((n, z.finish()?))
        }
        (false, Some(enc)) => {
            let mut a = enc.wrap_output(out)?;
            let n = io::copy(&mut input, &mut a)?;
            Ok((n, a.finish()?))
        }
        (true, Some(enc)) => {
            let a = enc.wrap_output(out)?;
            let mut z = zstd::Encoder::new(a, ZSTD_LEVEL)?;
            let n = io::copy(&mut input, &mut z)?;
            let a = z.finish()?;
            Ok((n, a.finish()?))
        }
    }
}

/// Unpacks `input` into `out`, removing an age layer and then a zstd layer where present.
/// Returns the layers removed (outermost first) and the bytes written.
pub fn unpack<R: Read, W: Write>(
    input: R,
    mut out: W,
    identities: Option<&Identities>,
) -> Result<(Vec<Layer>, u64), PackError> {
    let mut layers = Vec::new();
    let mut reader: Box<dyn BufRead + '_> = Box::new(BufReader::with_capacity(BUF, input));
    let head = reader.fill_buf()?;
    if head.starts_with(AGE_ARMOR) {
        return Err(PackError::Armored);
    }
    if head.starts_with(AGE_MAGIC) {
        let ids = identities.ok_or(PackError::NoIdentity)?;
        let decryptor =
            age::Decryptor::new_buffered(reader).map_err(|e| PackError::Age(e.to_string()))?;
        let plain = decryptor
            .decrypt(ids.ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| ids.decrypt_error(e))?;
        reader = Box::new(BufReader::with_capacity(BUF, AgePayload { inner: plain }));
        layers.push(Layer::Age);
    }
    let copied = (|| {
        let n = if reader.fill_buf()?.starts_with(ZSTD_MAGIC) {
            layers.push(Layer::Zstd);
            let mut z = zstd::Decoder::with_buffer(reader)?;
            io::copy(&mut z, &mut out)?
        } else {
            io::copy(&mut reader, &mut out)?
        };
        out.flush()?;
        Ok(n)
    })();
    match copied {
        Ok(n) => Ok((layers, n)),
        Err(e) => Err(match (payload_failure(&e), identities) {
            (Some(cause), Some(ids)) => ids.damaged(cause),
            _ => PackError::Io(e),
        }),
    }
}

/// Marks errors of the age payload stream (a chunk whose tag does not verify) so that they can
/// be told apart from errors of the zstd layer or the output after `io::copy`.
struct AgePayload<R> {
    inner: R,
}

#[derive(Debug)]
struct PayloadError(io::Error);

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for PayloadError {}

impl<R: Read> Read for AgePayload<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), PayloadError(e)))
    }
}

/// The age stream's own message when `e` came from the payload.
fn payload_failure(e: &io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|i| i.downcast_ref::<PayloadError>())
        .map(|p| p.0.to_string())
}

/// Bytes of an object's start that hold the age header and the first 64 KiB chunk (a header
/// is a few hundred bytes per recipient).
pub const HEAD_LEN: u64 = 128 << 10;

/// What [`open_head`] found at the start of a packed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The layers found, outermost first.
    pub layers: Vec<Layer>,
    /// The start of the plain data is a bbolt database (etcd's snapshot format).
    pub bolt: bool,
}

/// Opens the first bytes of a packed snapshot (at least [`HEAD_LEN`] of them, or the whole
/// file): decrypts the age header and first chunk with `identities`, decompresses the start of a
/// zstd layer, and checks the bbolt magic. Proves a key opens a copy without reading all of it.
pub fn open_head(head: &[u8], identities: Option<&Identities>) -> Result<Head, PackError> {
    const CHUNK: usize = 64 << 10;
    let mut layers = Vec::new();
    let mut plain = Vec::new();
    if head.starts_with(AGE_ARMOR) {
        return Err(PackError::Armored);
    }
    if head.starts_with(AGE_MAGIC) {
        let ids = identities.ok_or(PackError::NoIdentity)?;
        let decryptor = age::Decryptor::new(head).map_err(|e| PackError::Age(e.to_string()))?;
        let reader = decryptor
            .decrypt(ids.ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| ids.decrypt_error(e))?;
        // Only the first chunk: the bytes after it may be cut off mid-chunk.
        reader
            .take(CHUNK as u64)
            .read_to_end(&mut plain)
            .map_err(|e| PackError::Age(format!("the first chunk does not decrypt: {e}")))?;
        layers.push(Layer::Age);
    } else {
        plain.extend_from_slice(&head[..head.len().min(CHUNK)]);
    }
    let mut start = [0u8; 32];
    let n = if plain.starts_with(ZSTD_MAGIC) {
        layers.push(Layer::Zstd);
        let mut z = zstd::Decoder::new(plain.as_slice())?;
        let mut n = 0;
        while n < start.len() {
            match z.read(&mut start[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(PackError::Io(e)),
            }
        }
        n
    } else {
        let n = plain.len().min(start.len());
        start[..n].copy_from_slice(&plain[..n]);
        n
    };
    // bbolt's meta page: a 16-byte page header, then the magic 0xED0CDAED (little-endian).
    let bolt = n >= 20 && start[16..20] == 0xED0C_DAEDu32.to_le_bytes();
    Ok(Head { layers, bolt })
}

/// What [`pack_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedFile {
    /// Plain bytes read.
    pub read: u64,
    /// Bytes written, and their sha256 (hex).
    pub size: u64,
    pub sha256: String,
}

/// Packs `src` into a new file `dst` (mode 0600, written under a temp name then renamed).
pub fn pack_file(src: &Path, dst: &Path, packing: &Packing) -> io::Result<PackedFile> {
    use sha2::Digest;
    let input = std::fs::File::open(src)?;
    let mut out = None;
    write_atomic(dst, |f| {
        let hashing = Hashing {
            inner: f,
            hasher: sha2::Sha256::new(),
            written: 0,
        };
        let (read, h) = pack(input, hashing, packing)?;
        out = Some(PackedFile {
            read,
            size: h.written,
            sha256: hex::encode(h.hasher.finalize()),
        });
        Ok(read)
    })?;
    out.ok_or_else(|| io::Error::other("packing produced nothing"))
}

/// Hashes and counts what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Unpacks `src` into a new file `dst` (mode 0600, written under a temp name then renamed).
pub fn unpack_file(
    src: &Path,
    dst: &Path,
    identities: Option<&Identities>,
) -> Result<Vec<Layer>, PackError> {
    let input = std::fs::File::open(src)?;
    let mut layers = Vec::new();
    let mut failure = None;
    write_atomic(dst, |f| match unpack(input, f, identities) {
        Ok((l, n)) => {
            layers = l;
            Ok(n)
        }
        Err(e) => {
            failure = Some(e);
            Err(io::Error::other("unpack failed"))
        }
    })
    .map_err(|e| failure.take().unwrap_or(PackError::Io(e)))?;
    Ok(layers)
}

fn write_atomic(
    dst: &Path,
    body: impl FnOnce(&mut io::BufWriter<&std::fs::File>) -> io::Result<u64>,
) -> io::Result<u64> {
    let tmp = private_temp(parent(dst))?;
    let n = {
        let mut w = io::BufWriter::with_capacity(BUF, tmp.as_file());
        let n = body(&mut w)?;
        w.flush()?;
        n
    };
    persist(tmp, dst)?;
    Ok(n)
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A hidden temp file (mode 0600) in `dir`, removed unless persisted.
fn private_temp(dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-pack-")
        .tempfile_in(dir)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(tmp)
}

/// Makes a written temp file durable under `dst`.
fn persist(tmp: tempfile::NamedTempFile, dst: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(dst).map_err(|e| e.error)?;
    crate::fsutil::sync_dir(parent(dst))
}

/// A file packed from a stream, under a hidden temp name until [`PendingPack::persist`];
/// removed if dropped.
#[derive(Debug)]
pub struct PendingPack {
    tmp: tempfile::NamedTempFile,
    pub packed: PackedFile,
    /// Size and sha256 (hex) of the plain bytes that were packed.
    pub plain: (u64, String),
}

impl PendingPack {
    /// Puts the packed file in place at `dst` (same directory as the temp file).
    pub fn persist(self, dst: &Path) -> io::Result<()> {
        persist(self.tmp, dst)
    }
}

/// The thread of [`pack_stream`]; its result is the packed temp file.
pub type PackThread = tokio::task::JoinHandle<io::Result<PendingPack>>;

/// Packs what the returned writer gets into a hidden temp file in `dir`, on a blocking thread
/// fed through a bounded channel; the thread ends when the writer is dropped. The writer
/// blocks while the channel is full, so it must be used from a blocking thread.
pub fn pack_stream(
    dir: &Path,
    packing: &Packing,
) -> io::Result<(Box<dyn Write + Send>, PackThread)> {
    use sha2::Digest;
    let tmp = private_temp(dir)?;
    let (tx, rx) = crate::chan::pipe(4);
    let packing = packing.clone();
    let thread = tokio::task::spawn_blocking(move || {
        let mut input = crate::check::HashingReader::new(rx);
        let packed = {
            let hashing = Hashing {
                inner: io::BufWriter::with_capacity(BUF, tmp.as_file()),
                hasher: sha2::Sha256::new(),
                written: 0,
            };
            let (read, mut h) = pack(&mut input, hashing, &packing)?;
            h.flush()?;
            PackedFile {
                read,
                size: h.written,
                sha256: hex::encode(h.hasher.finalize()),
            }
        };
        Ok(PendingPack {
            tmp,
            packed,
            plain: input.finish(),
        })
    });
    Ok((Box::new(tx), thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (age::x25519::Identity, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let r = id.to_public();
        (id, r)
    }

    fn identities(id: &age::x25519::Identity) -> (tempfile::TempDir, Identities) {
        use age::secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.txt");
        let text = format!("{}\n", id.to_string().expose_secret());
        std::fs::write(&p, &text).unwrap();
        // A key others can read is refused, with the fix.
        let e = Identities::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        crate::fsutil::write_atomic(&p, text.as_bytes(), 0o600).unwrap();
        let ids = Identities::load(&p).unwrap();
        (dir, ids)
    }

    #[test]
    fn every_combination_round_trips_and_names_its_layers() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (id, r) = key();
        let (_d, ids) = identities(&id);
        for (compress, encrypt) in [(false, false), (true, false), (false, true), (true, true)] {
            let p = Packing {
                compress,
                recipients: if encrypt { vec![r.clone()] } else { vec![] }.into(),
            };
            let (n, packed) = pack(&data[..], Vec::new(), &p).unwrap();
            assert_eq!(n, data.len() as u64);
            let mut back = Vec::new();
            let (layers, m) = unpack(&packed[..], &mut back, Some(&ids)).unwrap();
            assert_eq!(back, data);
            assert_eq!(m, data.len() as u64);
            let mut expect = p.layers();
            expect.reverse();
            assert_eq!(layers, expect, "compress={compress} encrypt={encrypt}");
        }
    }

    #[test]
    fn wrong_or_missing_identity_is_a_clear_error() {
        let (_, r) = key();
        let (other, _) = key();
        let (_d, ids) = identities(&other);
        let p = Packing {
            compress: true,
            recipients: vec![r].into(),
        };
        let (_, packed) = pack(&b"hello"[..], Vec::new(), &p).unwrap();
        let e = unpack(&packed[..], Vec::new(), Some(&ids)).unwrap_err();
        assert!(matches!(e, PackError::WrongIdentity { .. }), "{e}");
        assert!(e.to_string().contains("key.txt"), "{e}");
        let e = unpack(&packed[..], Vec::new(), None).unwrap_err();
        assert!(e.to_string().contains("--identity"), "{e}");
    }

    /// A bbolt-like start (meta magic at byte 16) followed by incompressible bytes, so the
    /// packed file is several age chunks long and the head is a true prefix.
    #[test]
    fn the_head_alone_proves_the_key_and_the_format() {
        let mut data = vec![0u8; 16];
        data.extend_from_slice(&0xED0C_DAEDu32.to_le_bytes());
        let mut x = 1u64;
        while data.len() < 600_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            data.push((x >> 56) as u8);
        }
        let (id, r) = key();
        let (_d, ids) = identities(&id);
        let (other, _) = key();
        let (_o, wrong) = identities(&other);
        for compress in [false, true] {
            let p = Packing {
                compress,
                recipients: vec![r.clone()].into(),
            };
            let (_, packed) = pack(&data[..], Vec::new(), &p).unwrap();
            assert!(packed.len() as u64 > HEAD_LEN * 3);
            let head = &packed[..HEAD_LEN as usize];
            let h = open_head(head, Some(&ids)).unwrap();
            let mut expect = p.layers();
            expect.reverse();
            assert_eq!(h.layers, expect);
            assert!(h.bolt, "compress={compress}");
            let e = open_head(head, Some(&wrong)).unwrap_err();
            assert!(matches!(e, PackError::WrongIdentity { .. }), "{e}");
            assert!(matches!(
                open_head(head, None).unwrap_err(),
                PackError::NoIdentity
            ));
        }
        // A damaged first chunk is not a key problem.
        let p = Packing {
            compress: false,
            recipients: vec![r].into(),
        };
        let (_, mut packed) = pack(&data[..], Vec::new(), &p).unwrap();
        let at = packed.len() / 100;
        packed[at] ^= 1;
        let e = open_head(&packed[..HEAD_LEN as usize], Some(&ids)).unwrap_err();
        assert!(matches!(e, PackError::Age(_)), "{e}");
        // Not packed: the start itself.
        assert!(open_head(&data[..1000], None).unwrap().bolt);
        assert!(
            !open_head(b"not a database at all, nope", None)
                .unwrap()
                .bolt
        );
    }

    #[test]
    fn a_damaged_payload_says_so_and_names_the_identity_recipient() {
        let (id, r) = key();
        let (_d, ids) = identities(&id);
        assert_eq!(ids.recipients(), [r.to_string()]);
        // Barely compressible, so the payload stays far longer than the header.
        let data: Vec<u8> = (0..200_000u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        for compress in [false, true] {
            let p = Packing {
                compress,
                recipients: vec![r.clone()].into(),
            };
            let (_, mut packed) = pack(&data[..], Vec::new(), &p).unwrap();
            // One flipped byte deep in the payload: the header still opens with the key.
            let at = packed.len() - 100;
            packed[at] ^= 0x01;
            let e = unpack(&packed[..], Vec::new(), Some(&ids)).unwrap_err();
            assert!(matches!(e, PackError::Damaged { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("damaged"), "{msg}");
            assert!(msg.contains("another key"), "{msg}");
            assert!(msg.contains(&r.to_string()), "{msg}");
            assert!(msg.contains("decryption error"), "{msg}");
        }
        // A wrong key names the recipient it has.
        let (other, _) = key();
        let (_d2, other_ids) = identities(&other);
        let p = Packing {
            compress: false,
            recipients: vec![r.clone()].into(),
        };
        let (_, packed) = pack(&data[..], Vec::new(), &p).unwrap();
        let e = unpack(&packed[..], Vec::new(), Some(&other_ids)).unwrap_err();
        assert!(
            e.to_string().contains(&other.to_public().to_string()),
            "{e}"
        );
    }

    #[test]
    fn names_split_into_base_and_layers() {
        assert_eq!(
            split_name("etcd-1.snapshot.zst.age"),
            ("etcd-1.snapshot", vec![Layer::Zstd, Layer::Age])
        );
        assert_eq!(
            split_name("a.snapshot.age"),
            ("a.snapshot", vec![Layer::Age])
        );
        assert_eq!(split_name("a.snapshot"), ("a.snapshot", vec![]));
        let p = Packing {
            compress: true,
            recipients: vec![key().1].into(),
        };
        assert_eq!(p.file_name("a.snapshot"), "a.snapshot.zst.age");
    }
}
