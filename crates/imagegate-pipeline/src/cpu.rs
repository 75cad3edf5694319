//! The bounded pool that CPU stages run on, and per-thread CPU time.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Runs CPU-bound closures on tokio's blocking threads, at most `workers` at once and
/// at most `queue` more waiting; past that the caller is told to come back later
/// instead of the queue growing without bound.
#[derive(Clone)]
pub struct CpuPool {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
    /// Jobs running plus waiting when the pool is full, for the refusal message.
    capacity: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the CPU pool is full ({0} jobs running or waiting)")]
    Full(usize),
    #[error("a CPU job panicked: {0}")]
    Panicked(String),
}

impl CpuPool {
    pub fn new(workers: usize, queue: usize) -> CpuPool {
        let workers = workers.max(1);
        CpuPool {
            running: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(Semaphore::new(workers + queue)),
            capacity: workers + queue,
        }
    }

    /// Workers no job holds right now, for a running job's helper threads.
    pub fn idle_workers(&self) -> IdleWorkers {
        IdleWorkers(self.running.clone())
    }

    /// A place in the pool (running or queued), or `Full` at once when there is none.
    /// Taken before a job is built, so a caller that is turned away still holds
    /// whatever the job would have consumed.
    pub fn admit(&self) -> Result<Admitted, PoolError> {
        let admitted = self
            .admitted
            .clone()
            .try_acquire_owned()
            .map_err(|_| PoolError::Full(self.capacity))?;
        Ok(Admitted {
            admitted,
            running: self.running.clone(),
        })
    }

    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.admit()?.run(job).await
    }
}

/// A job's place in the pool, from [`CpuPool::admit`].
pub struct Admitted {
    admitted: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
}

impl Admitted {
    /// Waits for a worker, then runs `job` on it. The places go back when the job
    /// ends, not when the caller stops waiting: a blocking job cannot be cancelled,
    /// and callers that leave must not let more jobs run than there are workers.
    pub async fn run<T, F>(self, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let running = self
            .running
            .acquire_owned()
            .await
            .expect("the pool semaphore is never closed");
        let admitted = self.admitted;
        tokio::task::spawn_blocking(move || {
            let _places = (admitted, running);
            job()
        })
        .await
        .map_err(|e| PoolError::Panicked(e.to_string()))
    }
}

/// Lets a running job spread over workers the pool has idle (a miss encodes its files
/// in parallel), without ever running more CPU threads than the pool has workers:
/// under load every worker already runs a job of its own, and extra threads would
/// only add one libaom encoder's memory each (about 33 MB at 1024 px) and contend
/// for the same cores.
#[derive(Clone)]
pub struct IdleWorkers(Arc<Semaphore>);

impl IdleWorkers {
    /// Up to `at_most` idle workers, held until the returned permits drop. Never
    /// waits, and takes none while jobs are waiting for a worker (tokio's semaphore
    /// hands released permits to waiters first).
    pub fn take(&self, at_most: usize) -> Vec<OwnedSemaphorePermit> {
        (0..at_most)
            .map_while(|_| self.0.clone().try_acquire_owned().ok())
            .collect()
    }
}

/// CPU time consumed by the calling thread so far, in milliseconds.
pub fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_THREAD_CPUTIME_ID is
    // supported on every Linux this runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// CPU time of the calling thread plus every thread it starts while the clock runs:
/// a Linux perf task clock that child threads inherit (a thread that exits adds its
/// count to the parent's). libaom starts its worker threads inside the encode call
/// and joins them before it returns, so this is an encode's whole cost where the
/// calling thread's own clock would see only part of it.
///
/// Threads the caller started *before* the clock do not count: a job that spreads
/// over scoped threads starts them first and then starts each thread's clock, so no
/// thread is counted twice.
pub struct TaskClock {
    counter: std::fs::File,
}

impl TaskClock {
    /// Starts counting now. Fails where the kernel refuses perf events (a
    /// `perf_event_paranoid` of 3, or a seccomp profile that blocks the syscall).
    pub fn start() -> std::io::Result<TaskClock> {
        use perf_event_open_sys::bindings;
        use std::os::fd::FromRawFd;
        let mut attr = bindings::perf_event_attr {
            type_: bindings::PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<bindings::perf_event_attr>() as u32,
            config: u64::from(bindings::PERF_COUNT_SW_TASK_CLOCK),
            ..Default::default()
        };
        attr.set_inherit(1);
        // A paranoid level of 2 (the usual default) lets a process count itself only
        // with the kernel excluded. The task clock counts the thread's whole run time
        // either way: it is updated from the scheduler's accounting.
        attr.set_exclude_kernel(1);
        attr.set_exclude_hv(1);
        // SAFETY: attr is fully initialised and sized; pid 0 and cpu -1 count the
        // calling thread on any CPU; the returned descriptor is owned by the guard.
        let fd = unsafe {
            perf_event_open_sys::perf_event_open(
                &mut attr,
                0,
                -1,
                -1,
                libc::c_ulong::from(bindings::PERF_FLAG_FD_CLOEXEC),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(TaskClock {
            // SAFETY: fd is a descriptor the kernel just opened for us alone.
            counter: unsafe { std::fs::File::from_raw_fd(fd) },
        })
    }

    /// Whether this process may use task clocks, checked once.
    pub fn available() -> bool {
        static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVAILABLE.get_or_init(|| match TaskClock::start() {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "perf task clocks are not available (perf_event_open refused; in Docker, \
                     --cap-add PERFMON): libaom encodes stay on one thread, whose CPU time \
                     the thread clock can account"
                );
                false
            }
        })
    }

    /// Milliseconds counted so far: this thread's and its children's, running or exited.
    pub fn elapsed_ms(&self) -> std::io::Result<f64> {
        use std::io::Read;
        let mut nanos = [0u8; 8];
        (&self.counter).read_exact(&mut nanos)?;
        Ok(u64::from_ne_bytes(nanos) as f64 / 1e6)
    }
}

/// Wall and thread-CPU time of one piece of synchronous work.
pub struct Measured<T> {
    pub value: T,
    pub wall_ms: f64,
    pub cpu_ms: f64,
}

pub fn measure<T>(work: impl FnOnce() -> T) -> Measured<T> {
    let wall = std::time::Instant::now();
    let cpu = thread_cpu_ms();
    let value = work();
    Measured {
        value,
        wall_ms: wall.elapsed().as_secs_f64() * 1e3,
        cpu_ms: thread_cpu_ms() - cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_pool_refuses_instead_of_queueing() {
        let pool = CpuPool::new(1, 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let blocker = {
            let pool = pool.clone();
            let rx = rx.clone();
            tokio::spawn(async move { pool.run(move || rx.lock().unwrap().recv().unwrap()).await })
        };
        let queued = {
            let pool = pool.clone();
            let rx = rx.clone();
            tokio::spawn(async move { pool.run(move || rx.lock().unwrap().recv().unwrap()).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(matches!(pool.run(|| ()).await, Err(PoolError::Full(2))));
        tx.send(()).unwrap();
        tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        queued.await.unwrap().unwrap();
        pool.run(|| ()).await.unwrap();
    }

    /// A caller that stops waiting does not give the job's worker back while the
    /// job still runs: the next job waits, and a third is refused.
    #[tokio::test]
    async fn a_job_whose_caller_left_keeps_its_worker_until_it_ends() {
        let pool = CpuPool::new(1, 0);
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel::<()>();
        let abandoned = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    started.send(()).unwrap();
                    hold.recv().unwrap();
                })
                .await
            })
        };
        running.await.unwrap();
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        assert!(
            matches!(pool.run(|| ()).await, Err(PoolError::Full(1))),
            "the abandoned job still holds the only worker"
        );
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match pool.run(|| ()).await {
                Ok(()) => break,
                Err(PoolError::Full(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await
                }
                Err(e) => panic!("the worker never came back: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn helpers_only_take_idle_workers() {
        let pool = CpuPool::new(3, 4);
        let idle = pool.idle_workers();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<usize>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        // One job running: two of three workers are idle, and a job can borrow both.
        let job = {
            let pool = pool.clone();
            let idle = idle.clone();
            let release_rx = release_rx.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    let helpers = idle.take(8);
                    started_tx.send(helpers.len()).unwrap();
                    release_rx.lock().unwrap().recv().unwrap();
                })
                .await
            })
        };
        let borrowed = tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        assert_eq!(borrowed, 2);
        // All three workers are taken: nothing is left to borrow, and the next job
        // waits for a worker instead of running beside them.
        assert!(idle.take(1).is_empty());
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(|| ()).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        release_tx.send(()).unwrap();
        job.await.unwrap().unwrap();
        waiting.await.unwrap().unwrap();
        assert_eq!(idle.take(8).len(), 3);
    }

    #[test]
    fn task_clock_counts_the_threads_started_while_it_runs() {
        // Not skipped where perf events are refused: CI runs where libaom threads
        // are on, and a machine without task clocks must fail here, not pass quietly.
        let clock = TaskClock::start().expect("perf_event_open for a task clock");
        let before = thread_cpu_ms();
        let child_cpu_ms = std::thread::spawn(|| {
            let start = thread_cpu_ms();
            let spin_until = std::time::Instant::now() + std::time::Duration::from_millis(60);
            let mut x = 0u64;
            while std::time::Instant::now() < spin_until {
                x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            }
            thread_cpu_ms() - start
        })
        .join()
        .unwrap();
        let own_cpu_ms = thread_cpu_ms() - before;
        let counted = clock.elapsed_ms().unwrap();
        assert!(
            child_cpu_ms > 1.0,
            "the child spun for {child_cpu_ms} ms of CPU"
        );
        assert!(
            counted >= child_cpu_ms && counted <= child_cpu_ms + own_cpu_ms + 5.0,
            "task clock {counted} ms; child {child_cpu_ms} ms, caller {own_cpu_ms} ms"
        );
        assert!(TaskClock::available());
    }

    #[test]
    fn cpu_time_counts_work_not_sleep() {
        let busy = measure(|| (0..20_000_000u64).fold(0u64, |a, b| a.wrapping_add(b * b)));
        std::hint::black_box(busy.value);
        let idle = measure(|| std::thread::sleep(std::time::Duration::from_millis(50)));
        assert!(busy.cpu_ms > 1.0, "busy cpu {}", busy.cpu_ms);
        assert!(
            idle.cpu_ms < 10.0 && idle.wall_ms >= 50.0,
            "idle cpu {} wall {}",
            idle.cpu_ms,
            idle.wall_ms
        );
    }
}
