//! Frame I/O on one stream half: exact reads for the first control frame, buffered reads for
//! the rest, and whole-frame writes.

use std::io;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{frame, FrameDecoder, FrameError, FrameType, HEADER_LEN};

/// Reads buffered frames from one stream half.
pub(crate) struct FrameReader<R> {
    pub read: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    eof: bool,
}

/// What a read produced.
#[derive(Debug)]
pub(crate) enum ReadError {
    Frame(FrameError),
    Io(io::Error),
}

impl From<ReadError> for crate::RecvError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Frame(e) => Self::Protocol(e.to_string()),
            ReadError::Io(e) => Self::Connection(e.to_string()),
        }
    }
}

const READ_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(read: R, decoder: FrameDecoder) -> Self {
        Self { read, buf: BytesMut::new(), decoder, eof: false }
    }

    /// The next frame, or `None` at a clean end of stream. Cancel safe: bytes read stay in
    /// the buffer.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(FrameType, Bytes)>, ReadError>> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).map_err(ReadError::Frame)? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.eof {
                return Poll::Ready(if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Frame(FrameDecoder::truncated(&self.buf)))
                });
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = std::task::ready!(tokio_util::io::poll_read_buf(
                std::pin::Pin::new(&mut self.read),
                cx,
                &mut self.buf
            ))
            .map_err(ReadError::Io)?;
            if n == 0 {
                self.eof = true;
            }
        }
    }

    pub async fn next_frame(&mut self) -> Result<Option<(FrameType, Bytes)>, ReadError> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }
}

/// Reads exactly one control frame without reading past it, so raw bytes that follow (on a
/// byte stream) stay in the stream.
pub(crate) async fn read_control<R: AsyncRead + Unpin>(
    read: &mut R,
    max_control: usize,
) -> Result<(FrameType, Vec<u8>), ReadError> {
    let mut header = [0u8; HEADER_LEN];
    read.read_exact(&mut header).await.map_err(ReadError::Io)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    match FrameType::from_u8(header[4]) {
        Some(ty) if !ty.is_control() && len > 0 => {
            return Err(ReadError::Frame(FrameError::NotControl(ty)))
        }
        _ => {}
    }
    let decoder = FrameDecoder { max_msg: 0, max_control: max_control + 1 };
    let mut probe = BytesMut::from(&header[..]);
    // Check length and type from the header alone, before allocating the payload.
    match decoder.decode(&mut probe) {
        Ok(_) => {}
        Err(e) => return Err(ReadError::Frame(e)),
    }
    let ty = FrameType::from_u8(header[4])
        .ok_or(ReadError::Frame(FrameError::UnknownType(header[4])))?;
    let mut payload = vec![0; len - 1];
    read.read_exact(&mut payload).await.map_err(ReadError::Io)?;
    Ok((ty, payload))
}

/// Writes one whole frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    write: &mut W,
    ty: FrameType,
    payload: &[u8],
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
    frame::encode(ty, payload, &mut buf);
    write.write_all(&buf).await?;
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_frame(ty: FrameType, payload: &[u8]) -> Result<(FrameType, Vec<u8>), ReadError> {
        let mut bytes = BytesMut::new();
        frame::encode(ty, payload, &mut bytes);
        let mut input = &bytes[..];
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(read_control(&mut input, 64))
    }

    #[test]
    fn a_stream_must_start_with_a_control_frame() {
        let (ty, payload) = first_frame(FrameType::Open, b"ok").unwrap();
        assert_eq!((ty, &payload[..]), (FrameType::Open, &b"ok"[..]));
        let Err(ReadError::Frame(error)) = first_frame(FrameType::Msg, b"data") else {
            panic!("a MSG first frame was read");
        };
        assert_eq!(error, FrameError::NotControl(FrameType::Msg));
        assert_eq!(error.to_string(), "first frame on a stream is Msg, not a control frame");
        let Err(ReadError::Frame(error)) = first_frame(FrameType::Open, &[0; 65]) else {
            panic!("an oversized OPEN was read");
        };
        assert!(matches!(error, FrameError::TooLarge { limit: 65, .. }), "{error}");
    }
}
