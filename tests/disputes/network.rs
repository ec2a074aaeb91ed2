//! The HTTP network adapter against a real HTTP server standing in for the card
//! network.
