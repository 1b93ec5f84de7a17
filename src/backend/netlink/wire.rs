//! The nf_tables netlink wire format: message headers, the nfgenmsg header and nested
//! type-length-value attributes (native-endian lengths and types, 4-byte alignment; nf_tables
//! integers are big-endian). A small writer builds messages into one buffer (a whole batch), a
//! reader walks attributes of received messages. Numbers are from linux/netfilter/nf_tables.h.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const SUBSYS_NFTABLES: u16 = 10;
/// nfnetlink batch delimiters (`NFNL_MSG_BATCH_BEGIN`/`END`).
pub const MSG_BATCH_BEGIN: u16 = 0x10;
pub const MSG_BATCH_END: u16 = 0x11;
/// `NLMSG_ERROR`, `NLMSG_DONE`.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

/// nlmsg flags.
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLM_F_NONREC: u16 = 0x100;

/// `enum nf_tables_msg_types`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Msg {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    GetChain = 4,
    DelChain = 5,
    NewRule = 6,
    GetRule = 7,
    DelRule = 8,
    NewSet = 9,
    GetSet = 10,
    DelSet = 11,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
    NewObj = 18,
    GetObj = 19,
    NewFlowtable = 22,
    GetFlowtable = 23,
}

impl Msg {
    pub fn netlink_type(self) -> u16 {
        (SUBSYS_NFTABLES << 8) | self as u16
    }

    pub fn from_netlink_type(t: u16) -> Option<Msg> {
        if t >> 8 != SUBSYS_NFTABLES {
            return None;
        }
        use Msg::*;
        [
            NewTable,
            GetTable,
            DelTable,
            NewChain,
            GetChain,
            DelChain,
            NewRule,
            GetRule,
            DelRule,
            NewSet,
            GetSet,
            DelSet,
            NewSetElem,
            GetSetElem,
            DelSetElem,
            NewObj,
            GetObj,
            NewFlowtable,
            GetFlowtable,
        ]
        .into_iter()
        .find(|m| *m as u16 == t & 0xff)
    }
}

/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDRLEN: usize = 16;

/// Builds netlink messages back to back into one buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
    /// Start of the message being built.
    message: usize,
    /// Starts of the open nested attributes.
    nests: Vec<usize>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Starts a message with its nlmsghdr and nfgenmsg (`family`, version 0, `res_id`).
    pub fn begin(&mut self, msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.message = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end()
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    /// Finishes the current message.
    pub fn end(&mut self) {
        let len = (self.buf.len() - self.message) as u32;
        self.buf[self.message..self.message + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// An attribute with raw bytes.
    pub fn bytes(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub fn string(&mut self, kind: u16, s: &str) {
        let len = 4 + s.len() + 1;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// A big-endian u32 attribute.
    pub fn u32(&mut self, kind: u16, v: u32) {
        self.bytes(kind, &v.to_be_bytes());
    }

    /// A big-endian u64 attribute.
    pub fn u64(&mut self, kind: u16, v: u64) {
        self.bytes(kind, &v.to_be_bytes());
    }

    /// Opens a nested attribute; close with [`Writer::close`].
    pub fn open(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    pub fn close(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// One received netlink message.
#[derive(Debug)]
pub struct Message<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// The port id: in a notification, the port of the socket whose change it announces.
    pub port: u32,
    /// After the nlmsghdr (for nf_tables messages: nfgenmsg, then attributes).
    pub payload: &'a [u8],
}

/// Splits a received datagram into messages.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let msg = Message {
            msg_type: u16::from_ne_bytes(buf[4..6].try_into().ok()?),
            flags: u16::from_ne_bytes(buf[6..8].try_into().ok()?),
            seq: u32::from_ne_bytes(buf[8..12].try_into().ok()?),
            port: u32::from_ne_bytes(buf[12..16].try_into().ok()?),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(msg)
    })
}

/// One attribute: its type (without the nested flag) and payload.
#[derive(Clone, Copy, Debug)]
pub struct Attr<'a> {
    pub kind: u16,
    pub data: &'a [u8],
}

impl<'a> Attr<'a> {
    pub fn nested(&self) -> impl Iterator<Item = Attr<'a>> + 'a {
        attrs(self.data)
    }

    pub fn as_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.data.strip_suffix(&[0]).unwrap_or(self.data)).ok()
    }

    pub fn as_u32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.data.get(..4)?.try_into().ok()?))
    }

    pub fn as_u64(&self) -> Option<u64> {
        Some(u64::from_be_bytes(self.data.get(..8)?.try_into().ok()?))
    }
}

/// Attributes in a buffer.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = Attr<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & !NLA_F_NESTED & !0x4000;
        if len < 4 || len > buf.len() {
            return None;
        }
        let attr = Attr {
            kind,
            data: &buf[4..len],
        };
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(attr)
    })
}

/// The attributes of an nf_tables message (after its 4-byte nfgenmsg).
pub fn nft_attrs<'a>(msg: &Message<'a>) -> impl Iterator<Item = Attr<'a>> {
    attrs(msg.payload.get(4..).unwrap_or_default())
}

/// The family byte of an nf_tables message.
pub fn nft_family(msg: &Message<'_>) -> u8 {
    msg.payload.first().copied().unwrap_or(0)
}

/// libnftnl "udata": type-length-value with one-byte type and length, used for comments.
pub fn udata(tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, data) in tlvs {
        out.push(*kind);
        out.push(data.len() as u8);
        out.extend_from_slice(data);
    }
    out
}

/// Reads udata TLVs.
pub fn parse_udata(mut buf: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 2 {
        let (kind, len) = (buf[0], buf[1] as usize);
        if buf.len() < 2 + len {
            break;
        }
        out.push((kind, &buf[2..2 + len]));
        buf = &buf[2 + len..];
    }
    out
}

/// A NUL-terminated udata string.
pub fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_round_trip() {
        let mut w = Writer::new();
        w.begin(
            Msg::NewTable.netlink_type(),
            NLM_F_REQUEST | NLM_F_CREATE,
            7,
            2,
            0,
        );
        w.string(1, "kube-nft-proxy");
        w.open(2);
        w.u32(1, 0x1234);
        w.close();
        w.end();
        let buf = w.into_bytes();
        assert_eq!(buf.len() % 4, 0);
        let msgs: Vec<Message> = messages(&buf).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            Msg::from_netlink_type(msgs[0].msg_type),
            Some(Msg::NewTable)
        );
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(nft_family(&msgs[0]), 2);
        let a: Vec<Attr> = nft_attrs(&msgs[0]).collect();
        assert_eq!(a[0].as_str(), Some("kube-nft-proxy"));
        let inner: Vec<Attr> = a[1].nested().collect();
        assert_eq!(inner[0].as_u32(), Some(0x1234));
    }

    #[test]
    fn udata_tlvs() {
        let u = udata(&[(0, &cstring("knp:1"))]);
        assert_eq!(u, [0, 6, b'k', b'n', b'p', b':', b'1', 0]);
        assert_eq!(parse_udata(&u), [(0u8, &b"knp:1\0"[..])]);
    }
}
