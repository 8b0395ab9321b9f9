//! Reading JSON lines from a peer with a bound on their length: a peer that sends one
//! endless line (512 MiB took the supervisor to 544 MB) is cut off instead of being
//! buffered.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest line accepted. The largest legitimate messages are a state transfer's
/// lists (allocation sizes, epoll registrations, startup allocations of a big process),
/// a few MiB at most.
pub const MAX_LINE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("a message longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("a message that is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into lines. `next_line` is cancel-safe (its only await point is a
/// read, and what was read stays buffered here), so it can sit in a `select!`.
pub struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: usize,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    pub fn new(reader: R) -> Self {
        Self::with_max(reader, MAX_LINE)
    }

    pub fn with_max(reader: R, max: usize) -> Self {
        Self { reader, buf: Vec::new(), scanned: 0, max }
    }

    /// The next line without its newline; `None` at the end of the stream (a last line
    /// without a newline is returned first).
    pub async fn next_line(&mut self) -> Result<Option<String>, LineError> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                let line: Vec<u8> = self.buf.drain(..=end).take(end).collect();
                self.scanned = 0;
                return String::from_utf8(line).map(Some).map_err(|_| LineError::NotUtf8);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                return Err(LineError::TooLong);
            }
            let mut chunk = [0u8; 8192];
            let n = self.reader.read(&mut chunk).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                self.scanned = 0;
                return String::from_utf8(line).map(Some).map_err(|_| LineError::NotUtf8);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
    }

    #[test]
    fn lines_split_and_the_last_one_may_lack_a_newline() {
        block_on(async {
            let mut l = Lines::new(&b"{\"a\":1}\n\nlast"[..]);
            assert_eq!(l.next_line().await.unwrap().as_deref(), Some("{\"a\":1}"));
            assert_eq!(l.next_line().await.unwrap().as_deref(), Some(""));
            assert_eq!(l.next_line().await.unwrap().as_deref(), Some("last"));
            assert_eq!(l.next_line().await.unwrap(), None);
        });
    }

    #[test]
    fn an_endless_line_is_cut_off_at_the_bound() {
        block_on(async {
            let long = vec![b'x'; 100_000];
            let mut l = Lines::with_max(&long[..], 10_000);
            assert!(matches!(l.next_line().await, Err(LineError::TooLong)));
            let mut ok = Lines::with_max(&b"short\n"[..], 10_000);
            assert_eq!(ok.next_line().await.unwrap().as_deref(), Some("short"));
        });
    }
}
