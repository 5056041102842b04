"""Tables users of the TensorBoard profiler plugin and HTA expect, computed from the event model.

* :func:`top_cpu_ops`: the most expensive CPU ops (self and total time, by thread role);
* :func:`module_time`: forward time per ``nn.Module`` (traces with Python stacks);
* :func:`stream_view`: busy and idle time and queue length per GPU stream;
* :func:`memory_view`: allocator samples per step, and the allocations live at the peak;
* :func:`trace_diff`: ops and kernels added, removed, slower or faster between two traces.

:mod:`analyzers.views.render` renders each for the console, markdown and HTML. No torch import.
"""

from stallscope.analyzers.views.common import ViewRows
from stallscope.analyzers.views.cpu_ops import top_cpu_ops
from stallscope.analyzers.views.memory import memory_view
from stallscope.analyzers.views.modules import module_time
from stallscope.analyzers.views.streams import stream_view
from stallscope.analyzers.views.tracediff import trace_diff

__all__ = ["ViewRows", "memory_view", "module_time", "stream_view", "top_cpu_ops", "trace_diff"]
