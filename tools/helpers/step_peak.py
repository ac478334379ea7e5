# The peak memory of a training step, which several snippets measure, word for word
# (python -m tools.shared copies it in; a test checks that no copy differs). It needs,
# in the snippet: torch, nn, optim, device, ALLOCATOR and the MLP class.
class StepMemory:
    """The peak memory of the training steps run inside `with`, measured around them:
    the loop itself stays a plain training loop.
    CUDA: the caching allocator's counters. Cached blocks are given back first, so that
    every measurement starts from the same reserved memory, and the peaks are reset:
    .peak is max_memory_allocated() above `baseline` (default: what is allocated when
    the `with` starts); max_memory_reserved() is then this measurement's own.
    CPU, which has no such counters: watch() hooks count the bytes of the parameters,
    gradients, optimizer state, batch, logits, loss and what autograd saved for
    backward (each storage once) after each event: forward with the loss (the loss's
    forward hook), backward (the optimizer's step pre-hook) and the optimizer step (its
    post-hook). Moving the batch and zero_grad are not counted: neither is ever the
    peak, the forward adds to the first and the second only frees. .peak is the most
    bytes, .event the first event that had them (None on CUDA)."""

    def __init__(self, baseline=None):
        self.baseline, self.counts, self.hooks = baseline, [], []
        self.peak = self.event = self.saving = None

    def __enter__(self):
        if ALLOCATOR:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()  # to measure, not to recover (see above)
            if self.baseline is None:
                self.baseline = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        return self

    def watch(self, model, criterion, optimizer):
        """CPU: count the bytes alive after each event of these three's steps."""
        if ALLOCATOR:
            return  # the allocator counts every byte by itself
        self.model, self.optimizer, self.step = model, optimizer, 0
        self.images = self.labels = self.output = self.loss = None
        self.saved = {}  # storage address -> bytes, what autograd saved for backward
        self.hooks = [
            model.register_forward_pre_hook(self.batch_arrived),
            criterion.register_forward_hook(self.loss_computed),
            optimizer.register_step_pre_hook(self.backward_done),
            optimizer.register_step_post_hook(self.stepped),
        ]
        self.saving = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.saving.__enter__()

    def pack(self, t):
        self.saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()  # t itself would keep a saved output alive in a cycle

    def batch_arrived(self, model, args):
        self.step, self.images = self.step + 1, args[0]

    def loss_computed(self, criterion, args, loss):
        self.output, self.labels, self.loss = args[0], args[1], loss
        self.count("forward")  # with the loss

    def backward_done(self, optimizer, args, kwargs):
        self.saved.clear()  # backward frees what autograd saved
        self.count("backward")

    def stepped(self, optimizer, args, kwargs):
        self.count("optimizer step")

    def count(self, event):
        params = list(self.model.parameters())
        state = self.optimizer.state.values()
        tensors = [
            *params,
            *(p.grad for p in params),
            *(v for s in state for v in s.values() if torch.is_tensor(v)),
            self.images,
            self.labels,
            self.output,
            self.loss,
        ]
        sizes = {  # each storage once
            t.untyped_storage().data_ptr(): t.numel() * t.element_size()
            for t in tensors
            if t is not None
        }
        sizes.update((ptr, n) for ptr, n in self.saved.items() if ptr not in sizes)
        self.counts.append((sum(sizes.values()), f"{self.step}: {event}"))

    def __exit__(self, *exception):
        for hook in self.hooks:
            hook.remove()
        if self.saving is not None:
            self.saving.__exit__(*exception)
        if ALLOCATOR:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.baseline
        elif self.counts:
            self.peak, self.event = max(self.counts, key=lambda c: c[0])  # the first
        return False


def training_step_peak(batches, baseline=None):
    """Peak memory of a training step: the most tensor bytes alive at one moment over
    two plain training steps with Adam, from a fresh model; StepMemory measures them.
    Returns (bytes, the event of the CPU peak or None on CUDA)."""
    with StepMemory(baseline) as memory:  # CUDA: from here, the model included
        torch.manual_seed(0)
        model = MLP().to(device)
        criterion = nn.CrossEntropyLoss()
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
        memory.watch(model, criterion, optimizer)  # CPU: hooks that count bytes
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            output = model(images)
            loss = criterion(output, labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return memory.peak, memory.event
