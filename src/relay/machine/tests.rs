#[test]
fn sizes() {
    eprintln!(
        "machine {} pump {} owed {} framer {} effects {} reasons {}",
        std::mem::size_of::<super::Machine>(),
        std::mem::size_of::<crate::protocol::buffer::Pump>(),
        std::mem::size_of::<super::Owed>(),
        std::mem::size_of::<crate::protocol::framing::Framer>(),
        std::mem::size_of::<crate::protocol::sql::Effects>(),
        std::mem::size_of::<super::pins::Reasons>()
    );
}
