"""Launch recording: how a Plan turns its nodes into pre-bound launch lists (forward, loss +
backward, optimizer), once, at build time. Mixed into Plan (plan.py), whose buffers it reads:
`refs` (activations), `param_ref` / `grad_ref` and the optimizer state (its `store`), `grad_slot`,
`state_ref`, `workspace`, `life`.

    self._record(bw_nodes)      # fills fw_launches, bw_launches, opt_launches
"""
from __future__ import annotations

from ...errors import BackendError
from ...model.graph import Node
from .mixed import expand_saved, expanded, pack_launches
from .runtime import LaunchBuilder, NodeIO, TensorRef


class LaunchRecording:
    def _record(self, bw_nodes: list[Node]) -> None:
        """Forward launches of every node, then (training) the loss, each backward in reverse
        order, and the optimizer update."""
        b = LaunchBuilder(self.rt)
        nodes = self.graph.nodes
        self.dropout_nodes = [n.name for n in nodes if n.op == "Dropout"] if self.training else []
        for n in nodes:
            io = self._io(n)
            b.label = n.name
            first = len(b.launches)
            op = self.specs[n.name][0]
            if op.cl.alias:
                if not self.life.shared(n.inputs[0], n.outputs[0]):
                    b.launch("plan.cl", "copy", (io.y[0].size,), None, io.x[0], io.y[0], io.y[0].size)
            else:
                op.cl.forward(b, io)
            pack_launches(self, b, n)
            self._scope_dyn(b.launches[first:], n.name)
        self.fw_launches = list(b.launches)
        self.bw_launches = []
        self.opt_launches = []
        if not self.inference:
            b.launches = []
            b.label = "<loss>"
            self._expanded: set[str] = set()
            self._loss_launch(b)
            for n in bw_nodes:
                self._backward_launches(b, n)
            self.bw_launches = list(b.launches)
            b.launches = []
            b.label = "<optimizer>"
            self._optimizer_launches(b)
            self.opt_launches = list(b.launches)

    def _ref(self, t: str) -> "TensorRef":
        return self.param_ref[t] if t in self.param_ref else self.refs[t]

    def _io(self, n: Node) -> "NodeIO":
        op, a = self.specs[n.name]
        st = {k: self.refs[v] for k, v in self.state_ref.get(n.name, {}).items()}
        return NodeIO(n.name, n.op, a, [self._ref(t) for t in n.inputs], [self.refs[t] for t in n.outputs],
                      state=st, workspace=self.workspace, training=self.training,
                      bn_batch_stats=self.bn_batch_stats, act=self.acts.get(n.name))

    @staticmethod
    def _scope_dyn(launches, node: str) -> None:
        """Per-node names for per-step values (each Dropout its own seed) and node-prefixed labels
        (launchers may label their launches, e.g. 'gemm_nt': 'features.0.0/gemm_nt')."""
        for ln in launches:
            ln.dyn = {i: (f"{node}:{k}" if k == "seed" else k) for i, k in ln.dyn.items()}
            if not ln.label.startswith(node):
                ln.label = f"{node}/{ln.label}"

    def _grad_target(self, t: str, writer: str) -> "TensorRef | None":
        """Where `writer`'s backward puts its contribution to dL/dt: the gradient itself for the
        first writer, a temporary for later ones (folded in afterwards)."""
        if t in self.grad_ref:
            key = f"d:{t}@{writer}"
            return self.refs[key] if key in self.refs else self.grad_ref[t]
        if t not in self.grad_slot:
            return None
        ws = self.grad_writers[t]
        return self.refs[self.grad_slot[t]] if ws[0] == writer else self.refs[f"d:{t}@{writer}"]

    def _backward_launches(self, b, n: Node) -> None:
        op, a = self.specs[n.name]
        io = self._io(n)
        io.gy = [self.refs[self.grad_slot[t]] if t in self.grad_slot else None for t in n.outputs]
        if any(g is None for g in io.gy):
            raise BackendError(f"node '{n.name}': an output gradient has no writer")
        io.gx = [self._grad_target(t, n.name) if t in self.req else None for t in n.inputs]
        producers = self.graph.producers()
        done = set()
        for i, t in enumerate(n.inputs):
            if n.name not in self.recomputed.get(t, []):
                continue
            io.x[i] = self.refs[f"{t}@recomputed"]
            if self.recomputed[t][0] == n.name and t not in done:   # the first reader rewrites the copy
                done.add(t)
                p = producers[t]
                pio = self._io(p)
                pio.x = [expanded(self, b, n.name, s, done=self._expanded) for s in p.inputs]
                pio.y = [io.x[i]]
                b.label = f"{p.name}:recompute"
                first = len(b.launches)
                self.specs[p.name][0].cl.recompute(b, pio)
                self._scope_dyn(b.launches[first:], f"{p.name}:recompute")
        b.label = f"{n.name}:backward"
        first = len(b.launches)
        expand_saved(self, b, n, io, self._expanded)
        if op.cl.alias:
            gx, gy = io.gx[0], io.gy[0]
            x, y = n.inputs[0], n.outputs[0]
            if gx is not None and not (gx is self.refs.get(self.grad_slot.get(x, "")) and
                                       self.life.shared(f"d:{x}", f"d:{y}")):
                b.launch("plan.cl", "copy", (gy.size,), None, gy, gx, gy.size)
        else:
            op.cl.backward(b, io)
        self._scope_dyn(b.launches[first:], f"{n.name}:backward")
        for t, gx in zip(n.inputs, io.gx):
            if gx is None:
                continue
            main = self.grad_ref.get(t) or self.refs.get(self.grad_slot.get(t, ""))
            if main is not None and gx is not main:
                b.launch("plan.cl", "acc_add", (gx.size,), None, main, gx, gx.size)

    def _loss_launch(self, b) -> None:
        from ...ops.softmax import ce_scratch_bytes, cl_ce_fwd_bwd

        out = self.graph.outputs[0]
        scratch = TensorRef("ce_scratch", (ce_scratch_bytes(self.batch) // 4,),
                            self.rt.alloc(ce_scratch_bytes(self.batch)))
        cl_ce_fwd_bwd(b, self.refs[out], self.labels, self.loss_ref, self.correct_ref,
                      self.refs[self.grad_slot[out]], scratch, self.label_smoothing)

    def _optimizer_launches(self, b) -> None:
        """One update launch over the store's flat trainable range (clipping: two more, FedProx's
        proximal gradient: one before them; no host sync)."""
        from . import optim as clopt

        o, st = self.optimizer, self.store
        p, g, state = st.flat_params, st.flat_grads, st.opt_state
        scale = None
        if o.prox_mu > 0:
            clopt.prox_grad(b, g, p, st.anchor, o.prox_mu)
        if o.clip_grad_norm > 0:
            scale = st.clip_scale
            clopt.clip_grad_norm(b, [g], st.clip_partial, scale, o.clip_grad_norm)
        if o.kind == "sgd":
            clopt.sgd_step(b, p, g, state.get("momentum"), momentum=o.momentum, nesterov=o.nesterov,
                           weight_decay=o.weight_decay, scale=scale)
        elif o.kind in ("adam", "adamw"):
            clopt.adam_step(b, p, g, state["exp_avg"], state["exp_avg_sq"], betas=o.betas, eps=o.eps,
                            weight_decay=o.weight_decay, decoupled=o.kind == "adamw", scale=scale)
        else:
            raise BackendError(f"unknown optimizer '{o.kind}' (sgd, adam, adamw)")
