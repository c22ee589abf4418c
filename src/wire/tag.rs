//! Message type bytes by name: the messages a client sends after login, and the server's
//! replies the engine tells apart. One place, so a match on a message kind reads as one.

macro_rules! tags {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $byte:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $byte,)*
        }

        impl $name {
            /// The message kind of a type byte, if it is one of these.
            pub const fn of(byte: u8) -> Option<$name> {
                match byte {
                    $($byte => Some($name::$variant),)*
                    _ => None,
                }
            }

            pub const fn byte(self) -> u8 {
                self as u8
            }

            /// The whole message when it has no body (ParseComplete, Flush, ...).
            pub const fn empty(self) -> [u8; 5] {
                [self as u8, 0, 0, 0, 4]
            }
        }
    };
}

tags! {
    /// What a client may send once logged in.
    Frontend {
        Query = b'Q',
        FunctionCall = b'F',
        Sync = b'S',
        Flush = b'H',
        Execute = b'E',
        CopyData = b'd',
        CopyDone = b'c',
        CopyFail = b'f',
        Parse = b'P',
        Describe = b'D',
        Close = b'C',
        Bind = b'B',
        Terminate = b'X',
    }
}

tags! {
    /// The server's messages the engine matches replies with (others pass through unnamed).
    Backend {
        ReadyForQuery = b'Z',
        ErrorResponse = b'E',
        ParameterStatus = b'S',
        CopyInResponse = b'G',
        ParseComplete = b'1',
        BindComplete = b'2',
        CloseComplete = b'3',
        RowDescription = b'T',
        NoData = b'n',
        CommandComplete = b'C',
        EmptyQueryResponse = b'I',
        PortalSuspended = b's',
    }
}

/// Describe and Close name a prepared statement (or, with `P`, a portal).
pub const TARGET_STATEMENT: u8 = b'S';

/// ReadyForQuery's transaction status: idle, in a transaction block, in a failed one.
pub const STATUS_IDLE: u8 = b'I';
pub const STATUS_IN_TRANSACTION: u8 = b'T';
pub const STATUS_FAILED: u8 = b'E';

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frontend_tag_round_trips() {
        for &b in super::super::FRONTEND_TAGS {
            assert_eq!(Frontend::of(b).map(Frontend::byte), Some(b));
        }
        assert_eq!(Frontend::of(b'Z'), None);
        assert_eq!(Backend::of(b'1'), Some(Backend::ParseComplete));
        assert_eq!(Backend::CloseComplete.empty(), [b'3', 0, 0, 0, 4]);
    }
}
