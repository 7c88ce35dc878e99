//! The sync worker kind: gunicorn's sync semantics (the app runs on the
//! loop thread, one request at a time, no thread-safety asked of it), while
//! the connection layer keeps idle keep-alive connections parked.

use std::cell::RefCell;

use pyo3::prelude::*;

use super::serve::{Call, WsgiServer};
use crate::conn::connection::Peer;
use crate::conn::{Dispatch, Handler, Request, Served};
use crate::wsgi::{PeerValues, ThreadCache};

pub struct SyncHandler<'py> {
    py: Python<'py>,
    server: WsgiServer,
    keys: RefCell<ThreadCache>,
}

impl<'py> SyncHandler<'py> {
    pub fn new(py: Python<'py>, server: WsgiServer) -> SyncHandler<'py> {
        SyncHandler {
            py,
            server,
            keys: RefCell::default(),
        }
    }
}

impl Handler for SyncHandler<'_> {
    type ConnState = PeerValues;

    fn connection(&mut self, peer: &Peer, _listener: usize) -> PeerValues {
        PeerValues::new(self.py, peer.addr)
    }

    fn woke(&mut self) -> Result<(), i32> {
        super::check_signals(self.py)
    }

    fn reopen_logs(&mut self) {
        self.server.reopen_logs();
    }

    fn serve(&mut self, mut req: Request<'_>, peer: &mut PeerValues) -> Dispatch {
        let Some(body) = req.body.take() else {
            return Dispatch::Done(Served::closed(None));
        };
        let call = Call {
            head: &req.head,
            body,
            peer: req.peer,
            listener: req.listener,
            nreq: req.nreq,
            arrived: req.arrived,
        };
        Dispatch::Done(
            self.server
                .serve(self.py, call, &mut req.ctl, peer, &self.keys),
        )
    }
}
