//! Helpers for tests of listeners built on this crate (feature `testing`): watching for a connection the server should close.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Whether the server closed `stream` (end of file or an error) within `wait` of silence; an
/// answer before the close (such as a 408) is read past.
pub async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, wait: Duration) -> bool {
    let mut buffer = [0_u8; 1024];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}
