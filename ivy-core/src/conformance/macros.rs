//! The exported macros that turn the checks into `#[tokio::test]`s in a backend crate's tests.

/// Runs every broker check on a fresh broker from `make` each time.
#[macro_export]
macro_rules! broker_conformance {
    ($make:ident) => {
        mod broker_conformance {
            $crate::__conformance_cases!(
                $make, broker;
                round_trip, fifo_order, ack_removes, redelivery_after_consumer_dies,
                requeue_returns, retry_after_delay, delayed_publish, dead_letter_keeps_reason,
                prefetch_limits_unsettled, priorities, oversized_refused, end_to_end,
                worker_killed_mid_task, poison_messages, graceful_shutdown, encryption,
                // Workflows (issue 14)
                chains, groups, chords, chord_member_delivered_twice,
                chain_step_delivered_twice, cancelled_step_stops_the_chain,
                cancelled_chain_stops_at_the_next_step,
                // Bulk sends (issue 24)
                bulk_sends
            );
            // Cancellation, state, permanent errors, unique calls (issue 14).
            $crate::__conformance_cases!(
                $make, broker;
                cancel_before_start, cancel_while_running, cancel_while_no_worker,
                cancel_during_countdown, cancel_finished, state_injection, permanent_errors,
                unique_calls
            );
        }
    };
}

/// Runs every notifier check on a fresh notifier from `make` each time.
#[macro_export]
macro_rules! notifier_conformance {
    ($make:ident) => {
        mod notifier_conformance {
            $crate::__conformance_cases!(
                $make, notifier;
                publish_subscribe, final_is_kept_for_late_readers, results_expire, end_to_end,
                late_producer_gets_result, workers_are_announced_and_expire,
                worker_events_and_announcement,
                // Workflows (issue 14)
                claims, chains, groups, chords, chord_member_delivered_twice,
                chain_step_delivered_twice, cancelled_step_stops_the_chain,
                cancelled_chain_stops_at_the_next_step,
                // Bulk sends (issue 24)
                bulk_sends
            );
            // Cancellation, state, permanent errors, unique calls (issue 14).
            $crate::__conformance_cases!(
                $make, notifier;
                cancel_before_start, cancel_while_running, cancel_while_no_worker,
                cancel_during_countdown, cancel_finished, state_injection, permanent_errors,
                unique_calls
            );
            // Schedules and limits (issue 15)
            $crate::__conformance_cases!(
                $make, limits;
                claims_are_fenced, rate_turns_are_spaced, slots_are_leased
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:ident, $kind:ident; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$kind::$case(super::$make().await).await
            }
        )*
    };
}
