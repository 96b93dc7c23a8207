"""One BLAS thread for the small linear algebra done beside model passes (LIME's surrogates, probes, CAVs)."""


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread. These fits' solves and products are small (tens of rows),
    so one thread is as fast as two, and woken BLAS threads spin on the cores torch and ONNX Runtime need next: on 2
    shared cores that made the model work beside them up to 2x slower (benchmarks/lime_bench.py, tcav_bench.py).
    Sums are also taken in one order whatever the machine's core count."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
