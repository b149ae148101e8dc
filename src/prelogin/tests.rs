use proptest::prelude::*;

use super::*;

#[test]
fn the_longest_waiting_gives_way_when_the_total_is_full() {
    let mut lobby = Lobby::new(3, 3);
    let (a, _) = lobby.arrive('x', "a");
    let (_, _) = lobby.arrive('y', "b");
    let (_, _) = lobby.arrive('z', "c");
    let (d, evicted) = lobby.arrive('w', "d");
    let evicted = evicted.expect("a budget of 3 holds 3");
    assert_eq!((evicted.ticket, evicted.payload), (a, "a"));
    assert_eq!((evicted.source, evicted.full), ('x', Full::Total));
    assert_eq!(lobby.leave(a), None, "it gave way already");
    assert_eq!(lobby.len(), 3);
    assert_eq!(lobby.leave(d), Some("d"));
}

#[test]
fn a_full_source_gives_way_within_itself() {
    let mut lobby = Lobby::new(10, 2);
    let (other, _) = lobby.arrive('o', 0);
    let (first, _) = lobby.arrive('s', 1);
    let (_, none) = lobby.arrive('s', 2);
    assert!(none.is_none());
    let (_, evicted) = lobby.arrive('s', 3);
    let evicted = evicted.expect("source s holds 2");
    assert_eq!((evicted.ticket, evicted.full), (first, Full::Source));
    // The older connection of another source kept its place.
    assert_eq!(lobby.from_source(&'o'), 1);
    assert_eq!(lobby.from_source(&'s'), 2);
    assert_eq!(lobby.leave(other), Some(0));
}

#[test]
fn a_source_budget_as_large_as_the_total_is_named_as_the_total() {
    let mut lobby = Lobby::new(2, 2);
    let (first, _) = lobby.arrive('s', ());
    lobby.arrive('s', ());
    let (_, evicted) = lobby.arrive('s', ());
    let evicted = evicted.expect("the total holds 2");
    assert_eq!((evicted.ticket, evicted.full), (first, Full::Total));
}

#[test]
fn budgets_of_zero_still_let_a_newcomer_in() {
    let mut lobby = Lobby::new(0, 0);
    let (first, _) = lobby.arrive((), ());
    let (second, evicted) = lobby.arrive((), ());
    assert_eq!(evicted.map(|e| e.ticket), Some(first));
    assert_eq!(lobby.leave(second), Some(()));
    assert!(lobby.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Arrive(u8),
    /// The connection at this index (modulo how many are pending) logs in or leaves.
    Leave(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0u8..4).prop_map(Op::Arrive),
        2 => any::<usize>().prop_map(Op::Leave),
    ];
    proptest::collection::vec(op, 0..200)
}

proptest! {
    /// With any arrivals and departures: the newcomer always gets a place; whoever gives
    /// way is the oldest pending connection of its scope (its source when that budget was
    /// the full one, and then of the newcomer's own source; everyone otherwise), so a
    /// connection is never evicted while an older one of that scope still waits; the
    /// budgets hold; and when everyone has left, nothing is counted.
    #[test]
    fn the_oldest_gives_way_and_counts_return_to_zero(
        total in 1usize..8,
        per_source in 1usize..5,
        ops in ops(),
    ) {
        let mut lobby = Lobby::new(total, per_source);
        // The model: pending connections in arrival order, with their source.
        let mut model: Vec<(Ticket, u8)> = Vec::new();
        for op in ops {
            match op {
                Op::Arrive(source) => {
                    let (ticket, evicted) = lobby.arrive(source, ticket_payload(&model));
                    if let Some(e) = evicted {
                        prop_assert_ne!(e.ticket, ticket);
                        let pos = model.iter().position(|(t, _)| *t == e.ticket);
                        prop_assert!(pos.is_some(), "evicted one that was not pending");
                        let (_, evicted_source) = model.remove(pos.unwrap_or(0));
                        prop_assert_eq!(evicted_source, e.source);
                        let older = |(t, s): &&(Ticket, u8)| {
                            *t < e.ticket && (e.full == Full::Total || *s == e.source)
                        };
                        prop_assert!(!model.iter().any(|x| older(&x)));
                        if e.full == Full::Source {
                            prop_assert_eq!(e.source, source);
                        }
                    }
                    model.push((ticket, source));
                }
                Op::Leave(i) if !model.is_empty() => {
                    let (ticket, _) = model.remove(i % model.len());
                    prop_assert!(lobby.leave(ticket).is_some());
                    prop_assert!(lobby.leave(ticket).is_none());
                }
                Op::Leave(_) => {}
            }
            prop_assert_eq!(lobby.len(), model.len());
            prop_assert!(lobby.len() <= total);
            for source in 0..4u8 {
                let n = model.iter().filter(|(_, s)| *s == source).count();
                prop_assert_eq!(lobby.from_source(&source), n);
                prop_assert!(n <= per_source);
            }
        }
        for (ticket, _) in model.drain(..) {
            prop_assert!(lobby.leave(ticket).is_some());
        }
        prop_assert!(lobby.is_empty());
        prop_assert!(lobby.by_source.is_empty());
    }
}

/// Any payload will do; the model's length makes each distinct.
fn ticket_payload(model: &[(Ticket, u8)]) -> usize {
    model.len()
}

#[tokio::test]
async fn the_one_that_gives_way_is_told_why_and_counted() {
    let toml = "max_pending_logins = 2\nmax_pending_logins_per_addr = 1\n[databases.\"*\"]\n";
    let config = crate::config::from_toml(toml).unwrap();
    let refusals = Arc::new(Refusals::default());
    let prelogin = PreLogin::new(&config, refusals.clone());
    let peer = |ip: &str| Some(SocketAddr::new(ip.parse().unwrap(), 5000));
    let from = |ip| Source::of(peer(ip), &config);
    let (first, mut first_out) = prelogin.arrive(from("10.0.0.1"));
    let (_second, mut second_out) = prelogin.arrive(from("10.0.0.1"));
    let why = first_out.wait().await;
    assert_eq!(
        why.to_client_error().message,
        "too many connections logging in at once from address 10.0.0.1; this one waited \
         longest (max_pending_logins_per_addr = 1)"
    );
    assert_eq!(refusals.get(Cap::MaxPendingLoginsPerAddr), 1);
    drop(first);
    let (_unix, _) = prelogin.arrive(Source::UnixSocket);
    let (third, _) = prelogin.arrive(from("10.0.0.2"));
    let why = second_out.wait().await;
    assert_eq!(
        why.to_client_error().message,
        "too many connections logging in at once; this one waited longest \
         (max_pending_logins = 2)"
    );
    assert_eq!(refusals.get(Cap::MaxPendingLogins), 1);
    assert_eq!(prelogin.pending(), 2);
    // A connection that logged in (its place freed) is never told to go.
    let (_, mut out) = {
        drop(third);
        let (place, out) = prelogin.arrive(from("10.0.0.3"));
        drop(place);
        ((), out)
    };
    let never = tokio::time::timeout(std::time::Duration::from_millis(10), out.wait());
    assert!(never.await.is_err());
    assert_eq!(prelogin.pending(), 1);
}
