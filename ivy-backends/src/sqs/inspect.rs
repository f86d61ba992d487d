//! SQS's side of [`crate::inspect`]: depths by `GetQueueAttributes`, Ivy queues by
//! `ListQueues`, dead letters read and replayed, purges.
//!
//! Reading receives dead letters with a visibility timeout of [`READ_HIDE_SECS`] and, once
//! read, makes them visible again at once (`ChangeMessageVisibility` to 0). A visibility
//! timeout of 0 on the receive itself would lose nothing either, but every receive could then
//! return the same first messages again, so a listing could not get past them; hiding them
//! while reading lets each receive bring new ones. A crash while reading leaves them hidden
//! for at most that long, never gone. A replay sends each chosen message to the work queue,
//! and deletes its dead letter only once SQS confirmed the send.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, Message, MessageSystemAttributeName,
    QueueAttributeName,
};
use ivy_core::Result;

use super::queues::queue_missing;
use super::wire::{batch_entries, now_ms, Received};
use super::SqsBroker;
use crate::inspect::{PeekedDeadLetter, Pick, QueueDepth, Replayed};

/// How long a dead letter being read stays hidden if the reader dies before it makes it
/// visible again.
pub const READ_HIDE_SECS: i32 = 30;

fn sent_at(m: &Message) -> Option<u64> {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|t| t.parse().ok())
}

impl SqsBroker {
    /// The approximate counts SQS gives for the queue at `url`.
    async fn counts(&self, url: &str) -> Result<HashMap<QueueAttributeName, u64>> {
        let out = self
            .inner
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| self.failed(format_args!("could not read the attributes of {url}"), e))?;
        Ok(out
            .attributes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect())
    }

    /// What SQS tells of each Ivy queue of `queues` (approximate, as SQS counts): ready, in
    /// flight (not visible), delayed and dead letters; consumers are unknown to SQS (`None`).
    /// `None` for a queue that does not exist. Creates nothing.
    pub async fn depths(&self, queues: &[String]) -> Result<Vec<Option<QueueDepth>>> {
        let mut depths = Vec::with_capacity(queues.len());
        for q in queues {
            self.config().check_queue_name(q)?;
            let Some(url) = self.queue_url(q, false, false).await? else {
                depths.push(None);
                continue;
            };
            let work = self.counts(&url).await?;
            let dead = match self.queue_url(q, true, false).await? {
                Some(url) => self.counts(&url).await?,
                None => HashMap::new(),
            };
            let get = |m: &HashMap<QueueAttributeName, u64>, a| m.get(&a).copied();
            depths.push(Some(QueueDepth {
                ready: get(&work, QueueAttributeName::ApproximateNumberOfMessages),
                in_flight: get(
                    &work,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                ),
                delayed: get(
                    &work,
                    QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                ),
                dead: Some(
                    get(&dead, QueueAttributeName::ApproximateNumberOfMessages).unwrap_or(0),
                ),
                consumers: None,
            }));
        }
        Ok(depths)
    }

    /// The Ivy queues (names without the URL's prefix): the work queues whose dead-letter
    /// queue exists beside them. At most the first 1,000 SQS queues under the prefix are seen.
    pub async fn ivy_queues(&self) -> Result<Vec<String>> {
        let prefix = self.config().prefix.clone();
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .inner
                .client
                .list_queues()
                .queue_name_prefix(&prefix)
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| self.failed("could not list SQS queues", e))?;
            for url in out.queue_urls() {
                if let Some(name) = url.rsplit('/').next() {
                    names.push(name.to_owned());
                }
            }
            token = out.next_token;
            if token.is_none() || names.len() >= 1000 {
                break;
            }
        }
        let mut queues: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_prefix(prefix.as_str()))
            .filter(|q| {
                self.config().check_queue_name(q).is_ok()
                    && names.contains(&self.config().sqs_name(q, true))
            })
            .map(str::to_owned)
            .collect();
        queues.sort();
        Ok(queues)
    }

    /// One round of up to `max` (at most 10) dead letters of `queue`, hidden for `hide` s.
    async fn receive_dead(
        &self,
        queue: &str,
        url: &str,
        max: usize,
        first: bool,
        hide: i32,
    ) -> Result<Vec<Message>> {
        let out = self
            .inner
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            // A short wait for the first round (SQS may answer empty from some of its
            // servers), none after: the caller wants what is there now.
            .wait_time_seconds(if first { 1 } else { 0 })
            .visibility_timeout(hide)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| {
                self.failed(
                    format_args!("could not receive dead letters of `{queue}`"),
                    e,
                )
            })?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Makes the messages of `receipts` visible again at once.
    async fn show_again(&self, url: &str, receipts: &[String]) -> Result<()> {
        for chunk in receipts.chunks(10) {
            let entries = batch_entries(chunk, |id, receipt| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(id)
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .build()
            });
            self.inner
                .client
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.failed("could not make dead letters visible again", e))?;
        }
        Ok(())
    }

    /// Up to `limit` dead letters of Ivy queue `queue`, oldest first, left in the queue.
    pub async fn peek_dead_letters(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<PeekedDeadLetter>> {
        self.config().check_queue_name(queue)?;
        let Some(url) = self.queue_url(queue, true, false).await? else {
            return Ok(Vec::new());
        };
        let mut letters: Vec<PeekedDeadLetter> = Vec::new();
        let mut receipts = Vec::new();
        let read = async {
            while letters.len() < limit {
                let messages = self
                    .receive_dead(
                        queue,
                        &url,
                        limit - letters.len(),
                        letters.is_empty(),
                        READ_HIDE_SECS,
                    )
                    .await?;
                if messages.is_empty() {
                    break;
                }
                for m in messages {
                    let dead_since_ms = sent_at(&m);
                    let Some(received) = Received::new(m) else {
                        continue;
                    };
                    receipts.push(received.receipt.clone());
                    letters.push(PeekedDeadLetter {
                        body: received.body(),
                        reason: received.attrs.reason.clone(),
                        // SQS's own message id, not the task id: left out.
                        message_id: None,
                        dead_since_ms,
                    });
                }
            }
            Ok::<_, ivy_core::Error>(())
        }
        .await;
        let shown = self.show_again(&url, &receipts).await;
        read?;
        shown?;
        letters.sort_by_key(|l| l.dead_since_ms);
        Ok(letters)
    }

    /// Puts dead letters of `queue` back onto its work queue: each one sent to the dead
    /// letters before this started is shown to `pick`; one it picks is sent to the work queue
    /// and, once SQS confirmed that, deleted from the dead letters. The others are made
    /// visible again at the end.
    ///
    /// SQS's counts lag, so it reads until a receive comes back empty, and leaves the dead
    /// letters SQS stamped (`SentTimestamp`) after the start: a replayed call dead-lettered
    /// again meanwhile is not taken a second time. A message seen twice (the run outlasted
    /// the 30 s it hides what it read) ends the reading.
    pub async fn replay_dead_letters(
        &self,
        queue: &str,
        mut pick: impl FnMut(&PeekedDeadLetter) -> Pick,
    ) -> Result<Replayed> {
        self.config().check_queue_name(queue)?;
        let Some(url) = self.queue_url(queue, true, false).await? else {
            return Ok(Replayed::default());
        };
        let started = now_ms();
        let limit = self.size_limit(queue, false).await;
        let mut report = Replayed::default();
        let mut left = Vec::new();
        let mut seen = HashSet::new();
        let run = async {
            let mut first = true;
            'reading: loop {
                let messages = self
                    .receive_dead(queue, &url, 10, first, READ_HIDE_SECS)
                    .await?;
                first = false;
                if messages.is_empty() {
                    break;
                }
                for m in messages {
                    let dead_since_ms = sent_at(&m);
                    let again = m.message_id.clone().is_some_and(|id| !seen.insert(id));
                    let Some(received) = Received::new(m) else {
                        continue;
                    };
                    if again || dead_since_ms.is_some_and(|t| t > started) {
                        left.push(received.receipt);
                        if again {
                            break 'reading;
                        }
                        report.left += 1;
                        continue;
                    }
                    let letter = PeekedDeadLetter {
                        body: received.body(),
                        reason: received.attrs.reason.clone(),
                        message_id: None,
                        dead_since_ms,
                    };
                    let (id, body) = match pick(&letter) {
                        Pick::Replay { id, body } => (id, body),
                        _ => {
                            report.left += 1;
                            left.push(received.receipt);
                            continue;
                        }
                    };
                    let out = self.plan(queue, &body, None, Some(&id), None, limit)?;
                    self.send_to(queue, false, out, "replay a dead letter")
                        .await?;
                    match self
                        .inner
                        .client
                        .delete_message()
                        .queue_url(&*url)
                        .receipt_handle(&received.receipt)
                        .send()
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if queue_missing(&e) => {}
                        Err(e) => {
                            return Err(self.failed(
                                format_args!("replayed `{id}` but could not delete its dead letter (it is now in both queues)"),
                                e,
                            ))
                        }
                    }
                    report.replayed.push(id);
                }
            }
            Ok::<_, ivy_core::Error>(())
        }
        .await;
        let shown = self.show_again(&url, &left).await;
        run?;
        shown?;
        Ok(report)
    }

    /// Deletes every dead letter of `queue` (`PurgeQueue`, which SQS allows once a minute per
    /// queue); returns about how many there were.
    pub async fn purge_dead_letters(&self, queue: &str) -> Result<u64> {
        self.config().check_queue_name(queue)?;
        let Some(url): Option<Arc<str>> = self.queue_url(queue, true, false).await? else {
            return Ok(0);
        };
        let before = self
            .counts(&url)
            .await?
            .get(&QueueAttributeName::ApproximateNumberOfMessages)
            .copied()
            .unwrap_or(0);
        self.inner
            .client
            .purge_queue()
            .queue_url(&*url)
            .send()
            .await
            .map_err(|e| {
                self.failed(
                    format_args!("could not purge the dead letters of `{queue}`"),
                    e,
                )
            })?;
        Ok(before)
    }
}
