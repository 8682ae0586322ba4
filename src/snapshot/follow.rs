//! Verifying a snapshot while talosctl is still writing it.
//!
//! `talosctl etcd snapshot PATH` opens `PATH.part` itself, copies the stream into it, and renames
//! it to `PATH` at the end (it cannot write to a pipe), then reads the file once more for its
//! `snapshot info` line. [`follow`] opens the file as soon as it appears and keeps the descriptor,
//! which on Linux follows the rename and outlives talosctl's removal of the `.part` on failure.
//! Then, while the bytes arrive:
//!
//! * a thread hashes them in order, holding back the last 32 bytes (the trailer, once the size is
//!   known);
//! * the calling thread reads the two meta pages, which say how long the file will be
//!   (`meta.pgid` pages and the trailer), and walks the bbolt tree with reads that wait for their
//!   pages to arrive ([`verify::analyze`], the code `verify_file` runs).
//!
//! The hashing thread can also hand every byte, in order, to a [`Tee`] (the off-site upload
//! packs and sends them while the stream runs); what the tee does never changes the verdict.
//!
//! When the writer has gone (talosctl exited, see [`StreamEnd`]) only the tail is left. If the
//! file does not end where the meta pages said it would (truncated, extra bytes, a damaged meta
//! page, nothing written at all), the walk guessed wrong and the answer is
//! [`Followed::Unsure`]: the caller verifies the finished file the ordinary way, so every
//! verdict and message is the one `verify_file` gives.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::verify::{self, Digests, ReadAt, Report, Visitor};

/// How long a reader waits for new bytes before looking again. Short against a network
/// stream, long enough that an idle follower costs nothing.
const POLL: Duration = Duration::from_millis(2);
/// Read size of the hashing thread.
const CHUNK: usize = 1 << 20;
/// Files claiming more than this are not followed (a damaged page count must not turn into a
/// huge page bitmap); the finished file is verified as a whole instead.
const MAX_FOLLOW: u64 = 1 << 40;
const TRAILER: u64 = 32;

/// Says when the writer has stopped for good: set it only once no process can write to the
/// file any more, so the length seen after it is final.
#[derive(Debug, Default)]
pub struct StreamEnd {
    done: Mutex<bool>,
    cv: Condvar,
}

impl StreamEnd {
    pub fn finish(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    pub fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps up to `d`, or less when the writer finishes meanwhile.
    fn pause(&self, d: Duration) {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            let _ = self.cv.wait_timeout(done, d);
        }
    }
}

/// What following the stream found out.
#[derive(Debug)]
pub enum Followed<V> {
    /// The whole file was verified on the way in; `visitor` saw every entry.
    Verified { report: Report, visitor: V },
    /// The stream did not turn out as its meta pages said (or no file appeared): verify the
    /// finished file, if there is one, as a whole.
    Unsure,
}

/// Gets the snapshot's bytes in order as the hashing thread reads them. It is dropped when
/// the follow ends (or at its first error): the receiving side sees the end of its input.
pub type Tee = Box<dyn Write + Send>;

/// One tee writing to each of `tees`; one that fails is dropped and the others go on.
pub fn fan_out(mut tees: Vec<Tee>) -> Option<Tee> {
    match tees.len() {
        0 => None,
        1 => tees.pop(),
        _ => Some(Box::new(FanOut(tees))),
    }
}

struct FanOut(Vec<Tee>);

impl Write for FanOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.retain_mut(|t| t.write_all(buf).is_ok());
        if self.0.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "every tee stopped",
            ));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.retain_mut(|t| t.flush().is_ok());
        Ok(())
    }
}

/// `<path>.part`, the name talosctl streams into.
pub fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Follows the snapshot talosctl is writing to `path` (through `path.part`) until `end` is
/// finished, verifying it and showing its entries to `visitor` on the way.
///
/// `Err` is an I/O error on a file that was opened; the caller may still verify the finished
/// file as a whole.
/// `tee`, when given, gets every byte the hashing thread reads.
pub fn follow<V: Visitor>(
    path: &Path,
    end: &StreamEnd,
    mut visitor: V,
    tee: Option<Tee>,
) -> io::Result<Followed<V>> {
    let Some(file) = open_when_there(path, end) else {
        return Ok(Followed::Unsure);
    };
    let growing = Growing { file: &file, end };
    let (digests, analysis) = std::thread::scope(|s| {
        let hasher = s.spawn(|| hash_growing(&file, end, tee));
        let analysis = walk(&growing, &mut visitor);
        let digests = hasher
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sha256 thread failed")));
        (digests, analysis)
    });
    let (digests, size) = digests?;
    let Some((expected, analysis)) = analysis else {
        return Ok(Followed::Unsure);
    };
    if size != expected {
        return Ok(Followed::Unsure);
    }
    let mut stored = [0u8; TRAILER as usize];
    FileExt::read_exact_at(&file, &mut stored, size - TRAILER)?;
    let report = verify::report(path, size, &digests, Some(stored), analysis);
    Ok(Followed::Verified { report, visitor })
}

/// Opens `path.part`, or `path` when talosctl already renamed it; `None` when the writer
/// finished without either appearing.
fn open_when_there(path: &Path, end: &StreamEnd) -> Option<File> {
    let part = part_path(path);
    loop {
        // Read before looking: a file that is missing after the writer finished never comes.
        let done = end.is_done();
        if let Ok(f) = File::open(&part).or_else(|_| File::open(path)) {
            return Some(f);
        }
        if done {
            return None;
        }
        end.pause(POLL);
    }
}

/// The expected size from the meta pages, then the tree walk, both reading through `growing`.
/// `None` when the meta pages do not give a size or the stream ended before a page the walk
/// needed (the finished file then tells the truth).
fn walk(growing: &Growing<'_>, visitor: &mut dyn Visitor) -> Option<(u64, verify::Analysis)> {
    let expected = verify::expected_size(growing)
        .ok()
        .flatten()
        .filter(|&n| n <= MAX_FOLLOW)?;
    let analysis = verify::analyze(growing, expected, expected - TRAILER, visitor).ok()?;
    Some((expected, analysis))
}

/// A file that is still being written: a read waits until its bytes are there, and fails with
/// `UnexpectedEof` when the writer finished short of them.
struct Growing<'a> {
    file: &'a File,
    end: &'a StreamEnd,
}

impl Growing<'_> {
    /// Waits until the file is at least `len` bytes long.
    fn wait_for(&self, len: u64) -> io::Result<()> {
        loop {
            let done = self.end.is_done();
            if self.file.metadata()?.len() >= len {
                return Ok(());
            }
            if done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended before this part of the file",
                ));
            }
            self.end.pause(POLL);
        }
    }
}

impl ReadAt for Growing<'_> {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.wait_for(off.saturating_add(buf.len() as u64))?;
        FileExt::read_exact_at(self.file, buf, off)
    }
}

/// Hashes the file in order as it grows, until the writer has finished. Returns the digests
/// as `verify_file` computes them and the final size.
fn hash_growing(file: &File, end: &StreamEnd, tee: Option<Tee>) -> io::Result<(Digests, u64)> {
    let mut hasher = Hashing {
        sha: Sha256::new(),
        tee,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    let size = loop {
        let done = end.is_done();
        let len = file.metadata()?.len();
        // The last 32 bytes may be the trailer: the body digest is taken just before them.
        let upto = len.saturating_sub(TRAILER);
        let before = off;
        off = hash_range(file, &mut hasher, &mut buf, off, upto)?;
        if done {
            break len;
        }
        if off == before {
            end.pause(POLL);
        }
    };
    let body = (size % 512 == TRAILER).then(|| hasher.sha.clone().finalize().into());
    hash_range(file, &mut hasher, &mut buf, off, size)?;
    if let Some(mut t) = hasher.tee.take() {
        // A tee that fails here only loses its copy; the receiver checks what it got.
        let _ = t.flush();
    }
    Ok((
        Digests {
            whole: hasher.sha.finalize().into(),
            body,
        },
        size,
    ))
}

/// The sha256 of the bytes read, and the tee that gets them too.
struct Hashing {
    sha: Sha256,
    tee: Option<Tee>,
}

impl Hashing {
    fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        // A tee that fails is dropped: the verification goes on without it.
        if let Some(t) = &mut self.tee
            && t.write_all(bytes).is_err()
        {
            self.tee = None;
        }
    }
}

/// Hashes bytes `from..to` of `file`.
fn hash_range(
    file: &File,
    hasher: &mut Hashing,
    buf: &mut [u8],
    mut from: u64,
    to: u64,
) -> io::Result<u64> {
    while from < to {
        let want = (to - from).min(buf.len() as u64) as usize;
        let n = FileExt::read_at(file, &mut buf[..want], from)?;
        if n == 0 {
            return Err(io::Error::other(
                "the file got shorter while it was being verified",
            ));
        }
        hasher.update(&buf[..n]);
        from += n as u64;
    }
    Ok(from)
}

#[cfg(test)]
mod tests {
    //! A thread plays talosctl: it writes `<path>.part` in chunks, then renames it (or removes
    //! it on failure), and only then says the stream is over, like `take` does when talosctl
    //! exits.

    use std::io::Write as _;
    use std::sync::Arc;

    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/snapshots"));
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Counts the entries shown and remembers their order (a hash of bucket, key and value).
    #[derive(Default, Debug, PartialEq)]
    struct Seen {
        entries: u64,
        order: u64,
        pages: Option<(u64, u64, u64)>,
    }

    impl Visitor for Seen {
        fn entry(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) {
            self.entries += 1;
            for part in [bucket, key, value] {
                self.order = xxhash_rust::xxh3::xxh3_64_with_seed(part, self.order);
            }
        }
        fn pages(&mut self, used: u64, total: u64, page_size: u64) {
            self.pages = Some((used, total, page_size));
        }
    }

    enum Ending {
        /// All bytes, then the rename (talosctl's success).
        Rename,
        /// The bytes up to here, then the `.part` is removed (talosctl's failure).
        FailAfter(usize),
    }

    /// Streams `data` into `path.part` in `chunk`-byte writes a little apart, ends it the way
    /// `ending` says, and finishes `end`.
    fn writer(
        path: PathBuf,
        data: Vec<u8>,
        chunk: usize,
        ending: Ending,
        end: Arc<StreamEnd>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let part = part_path(&path);
            let mut f = File::create(&part).unwrap();
            let stop = match ending {
                Ending::Rename => data.len(),
                Ending::FailAfter(n) => n,
            };
            for c in data[..stop].chunks(chunk) {
                f.write_all(c).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
            drop(f);
            match ending {
                Ending::Rename => std::fs::rename(&part, &path).unwrap(),
                Ending::FailAfter(_) => std::fs::remove_file(&part).unwrap(),
            }
            end.finish();
        })
    }

    fn follow_while_written(
        data: Vec<u8>,
        chunk: usize,
        ending: Ending,
    ) -> (Followed<Seen>, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.snapshot");
        let end = Arc::new(StreamEnd::default());
        let w = writer(path.clone(), data, chunk, ending, end.clone());
        let followed = follow(&path, &end, Seen::default(), None).unwrap();
        w.join().unwrap();
        (followed, path, dir)
    }

    #[test]
    fn a_growing_file_is_verified_as_verify_file_verifies_the_finished_one() {
        for name in ["small.snapshot", "overflow.snapshot", "hist.snapshot"] {
            let (followed, path, _dir) = follow_while_written(fixture(name), 1500, Ending::Rename);
            let Followed::Verified { report, visitor } = followed else {
                panic!("{name}: not verified while streaming: {followed:?}");
            };
            let mut whole = Seen::default();
            let expected = verify::verify_file_with(&path, &mut whole).unwrap();
            assert!(report.valid, "{name}: {:?}", report.problems);
            assert_eq!(report.trailer, verify::Trailer::Ok, "{name}");
            assert_eq!(report.status, expected.status, "{name}");
            assert_eq!(report.sha256, expected.sha256, "{name}");
            assert_eq!(report.size, expected.size, "{name}");
            assert_eq!(report.notes, expected.notes, "{name}");
            assert_eq!(report.path, path, "{name}: named after the final file");
            assert!(whole.entries > 0, "{name}");
            assert_eq!(
                visitor, whole,
                "{name}: same entries, same order, same pages"
            );
        }
    }

    /// A tee that keeps what it gets.
    struct Keep(Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Keep {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A tee that fails at once.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_tees_get_every_byte_in_order_and_a_failing_one_changes_nothing() {
        let data = fixture("overflow.snapshot");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.snapshot");
        let end = Arc::new(StreamEnd::default());
        let w = writer(
            path.clone(),
            data.clone(),
            1500,
            Ending::Rename,
            end.clone(),
        );
        let (a, b) = (Arc::default(), Arc::default());
        let tee = fan_out(vec![
            Box::new(Keep(Arc::clone(&a))),
            Box::new(Broken),
            Box::new(Keep(Arc::clone(&b))),
        ]);
        let followed = follow(&path, &end, Seen::default(), tee).unwrap();
        w.join().unwrap();
        let Followed::Verified { report, .. } = followed else {
            panic!("not verified while streaming: {followed:?}");
        };
        assert!(report.valid, "{:?}", report.problems);
        assert!(*a.lock().unwrap() == data);
        assert!(*b.lock().unwrap() == data);
    }

    #[test]
    fn a_bit_flipped_stream_fails_on_its_trailer() {
        let mut data = fixture("small.snapshot");
        let i = data.len() - 33;
        data[i] ^= 1;
        let (followed, path, _dir) = follow_while_written(data, 4096, Ending::Rename);
        let Followed::Verified { report, .. } = followed else {
            panic!("not verified while streaming: {followed:?}");
        };
        let expected = verify::verify_file(&path).unwrap();
        assert!(!report.valid);
        assert_eq!(report.trailer, verify::Trailer::Mismatch);
        assert_eq!(report.problems, expected.problems);
        assert!(report.problems[0].contains("sha256 trailer does not match"));
    }

    #[test]
    fn a_stream_cut_short_is_left_to_the_finished_file() {
        let data = fixture("overflow.snapshot");
        let half = data.len() / 2;
        let (followed, path, _dir) = follow_while_written(data, 2048, Ending::FailAfter(half));
        assert!(matches!(followed, Followed::Unsure), "{followed:?}");
        assert!(!path.exists() && !part_path(&path).exists());
    }

    #[test]
    fn a_writer_failing_before_any_byte_ends_the_follow() {
        let (followed, _, _dir) =
            follow_while_written(fixture("small.snapshot"), 4096, Ending::FailAfter(0));
        assert!(matches!(followed, Followed::Unsure), "{followed:?}");
    }

    #[test]
    fn no_file_at_all_ends_the_follow_when_the_writer_does() {
        let dir = tempfile::tempdir().unwrap();
        let end = Arc::new(StreamEnd::default());
        let e = end.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            e.finish();
        });
        let followed = follow(&dir.path().join("never"), &end, Seen::default(), None).unwrap();
        t.join().unwrap();
        assert!(matches!(followed, Followed::Unsure));
    }

    #[test]
    fn a_file_that_only_appears_under_its_final_name_is_verified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fast.snapshot");
        std::fs::write(&path, fixture("small.snapshot")).unwrap();
        let end = StreamEnd::default();
        end.finish();
        let Followed::Verified { report, .. } = follow(&path, &end, Seen::default(), None).unwrap()
        else {
            panic!("not verified");
        };
        assert!(report.valid, "{:?}", report.problems);
    }

    #[test]
    fn an_empty_or_longer_file_than_its_meta_says_is_left_to_the_finished_file() {
        let dir = tempfile::tempdir().unwrap();
        let end = StreamEnd::default();
        end.finish();
        let empty = dir.path().join("empty");
        std::fs::write(part_path(&empty), b"").unwrap();
        assert!(matches!(
            follow(&empty, &end, Seen::default(), None).unwrap(),
            Followed::Unsure
        ));

        let longer = dir.path().join("longer");
        let mut data = fixture("small.snapshot");
        data.extend_from_slice(&[0u8; 512]);
        std::fs::write(&longer, data).unwrap();
        assert!(matches!(
            follow(&longer, &end, Seen::default(), None).unwrap(),
            Followed::Unsure
        ));
    }
}
