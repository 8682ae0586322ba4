//! Bounded channels between blocking threads (packing, hashing, following a stream) and the
//! async side: a `Write` that sends chunks and a `Read` that receives them. Memory is bounded
//! by the channel's capacity times the chunk size.

use std::io::{self, Read, Write};

/// Chunk size of [`ChannelWriter`].
const CHUNK: usize = 1 << 20;

/// A blocking `Read` over chunks sent from the async side; bounded by the channel's capacity.
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> Self {
        Self {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

/// A writer for a blocking thread and the reader of what it writes, joined by a channel of
/// `depth` chunks.
pub(crate) fn pipe(depth: usize) -> (ChannelWriter<io::Result<bytes::Bytes>>, ChannelReader) {
    let (tx, rx) = tokio::sync::mpsc::channel(depth);
    (
        ChannelWriter::with(tx, |v| Ok(bytes::Bytes::from(v))),
        ChannelReader::new(rx),
    )
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

/// A `Write` that hands 1 MiB chunks to the async side or another blocking thread; blocks
/// while the channel is full, which bounds memory. Fails once the receiver has gone away.
pub(crate) struct ChannelWriter<T = Vec<u8>> {
    tx: tokio::sync::mpsc::Sender<T>,
    wrap: fn(Vec<u8>) -> T,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Vec<u8>>) -> Self {
        Self::with(tx, |v| v)
    }
}

impl<T> ChannelWriter<T> {
    /// Sends each chunk as `wrap` makes it (the reader's item type).
    pub(crate) fn with(tx: tokio::sync::mpsc::Sender<T>, wrap: fn(Vec<u8>) -> T) -> Self {
        Self {
            tx,
            wrap,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send((self.wrap)(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl<T> Write for ChannelWriter<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_writer_chunks_and_reports_a_gone_reader() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let mut w = ChannelWriter::new(tx);
        w.write_all(&vec![7u8; CHUNK + 10]).unwrap();
        w.flush().unwrap();
        assert_eq!(rx.try_recv().unwrap().len(), CHUNK);
        assert_eq!(rx.try_recv().unwrap().len(), 10);
        drop(rx);
        w.write_all(&vec![1u8; CHUNK]).unwrap_err();
    }

    #[test]
    fn a_pipe_delivers_every_byte_in_order_and_ends_when_the_writer_goes() {
        let data: Vec<u8> = (0..3 * CHUNK + 123).map(|i| (i % 251) as u8).collect();
        let (mut w, mut r) = pipe(2);
        let expected = data.clone();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            got
        });
        for c in data.chunks(10_000) {
            w.write_all(c).unwrap();
        }
        w.flush().unwrap();
        drop(w);
        assert_eq!(reader.join().unwrap(), expected);
    }
}
