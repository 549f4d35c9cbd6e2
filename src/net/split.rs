//! Read and write halves of one glommio `TcpStream`, for one reader task and one writer
//! task on the same executor. glommio tracks read and write readiness separately, and
//! each half borrows the stream only inside a single `poll_*` call, never across an
//! await, so the two never contend.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

pub struct ReadHalf(Rc<RefCell<TcpStream>>);
pub struct WriteHalf(Rc<RefCell<TcpStream>>);

impl ReadHalf {
    pub fn new(stream: Rc<RefCell<TcpStream>>) -> Self {
        ReadHalf(stream)
    }
}

impl WriteHalf {
    pub fn new(stream: Rc<RefCell<TcpStream>>) -> Self {
        WriteHalf(stream)
    }

    /// Shuts our sending side: the peer reads everything we sent, then EOF.
    pub fn shutdown(&self) {
        let fd = self.0.borrow().as_raw_fd();
        // SAFETY: `fd` is owned by the stream we hold a reference to, so it is open.
        unsafe {
            libc::shutdown(fd, libc::SHUT_WR);
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}
