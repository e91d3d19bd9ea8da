/* dev_emu.cpp - the emulated CUDA device (see dl_dev.h, docs/device.md): device memory is a memfd
 * mapped twice, PROT_NONE at the addresses handed out (a host dereference faults) and read/write
 * at a fixed offset where the emulated ops reach it; danlu's kernels run through the SIMT
 * emulator; GEMM, convolution and attention run on the CPU with cuBLASLt's / cuDNN's semantics;
 * every op's pointer arguments are checked against the live allocations and against the last
 * writer of each byte range (stream, logical clock), so an access on one stream to bytes another
 * stream wrote with no event or synchronisation between is DL_DEV_ERR_UNORDERED. Ops run at
 * once on the calling thread; the streams' order is tracked with vector clocks. */
#include "common.cuh"
#include "launch.cuh"
#include "dl_kernels.h"

#include <float.h>
#include <math.h>

/* danlu's kernels, compiled here for the emulator in a namespace of their own, their C launchers
 * renamed: the kernel tests include the same sources (tests/kernels/), and both link into one
 * test binary. */
#define dl_cuda_attention_forward dl_emu_k_attention_forward
#define dl_cuda_attention_backward dl_emu_k_attention_backward
#define dl_cuda_attention_forward_mma dl_emu_k_attention_forward_mma
#define dl_cuda_attention_backward_mma dl_emu_k_attention_backward_mma
#define dl_cuda_attention_backward_mma_workspace_size dl_emu_k_attention_backward_mma_workspace_size
#define dl_cuda_groupnorm_workspace_size dl_emu_k_groupnorm_workspace_size
#define dl_cuda_groupnorm_forward dl_emu_k_groupnorm_forward
#define dl_cuda_groupnorm_backward dl_emu_k_groupnorm_backward
#define dl_cuda_lora_workspace_size dl_emu_k_lora_workspace_size
#define dl_cuda_lora_forward dl_emu_k_lora_forward
#define dl_cuda_lora_backward dl_emu_k_lora_backward
#define dl_cuda_lora_conv1x1_forward dl_emu_k_lora_conv1x1_forward
#define dl_cuda_lora_conv1x1_backward dl_emu_k_lora_conv1x1_backward
#define dl_cuda_lora_merge dl_emu_k_lora_merge
#define dl_cuda_lora_unmerge dl_emu_k_lora_unmerge
#define dl_cuda_act_forward dl_emu_k_act_forward
#define dl_cuda_act_backward dl_emu_k_act_backward
#define dl_cuda_geglu_forward dl_emu_k_geglu_forward
#define dl_cuda_geglu_backward dl_emu_k_geglu_backward
#define dl_cuda_add dl_emu_k_add
#define dl_cuda_scale dl_emu_k_scale
#define dl_cuda_axpy dl_emu_k_axpy
#define dl_cuda_add_bcast_forward dl_emu_k_add_bcast_forward
#define dl_cuda_add_bcast_backward dl_emu_k_add_bcast_backward
#define dl_cuda_concat_channels_forward dl_emu_k_concat_channels_forward
#define dl_cuda_concat_channels_backward dl_emu_k_concat_channels_backward
#define dl_cuda_upsample_nearest2x_forward dl_emu_k_upsample_nearest2x_forward
#define dl_cuda_upsample_nearest2x_backward dl_emu_k_upsample_nearest2x_backward
#define dl_cuda_pad2d_forward dl_emu_k_pad2d_forward
#define dl_cuda_pad2d_backward dl_emu_k_pad2d_backward
#define dl_cuda_timestep_embedding dl_emu_k_timestep_embedding
#define dl_cuda_layernorm_forward dl_emu_k_layernorm_forward
#define dl_cuda_layernorm_backward dl_emu_k_layernorm_backward
#define dl_cuda_embed_tokens dl_emu_k_embed_tokens
#define dl_cuda_embed_tokens_backward dl_emu_k_embed_tokens_backward
#define dl_cuda_softmax_forward dl_emu_k_softmax_forward
#define dl_cuda_softmax_backward dl_emu_k_softmax_backward
#define dl_cuda_mse_loss_forward dl_emu_k_mse_loss_forward
#define dl_cuda_mse_loss_backward dl_emu_k_mse_loss_backward
#define dl_cuda_adamw_step dl_emu_k_adamw_step
#define dl_cuda_sumsq dl_emu_k_sumsq
#define dl_cuda_clip_coef dl_emu_k_clip_coef
#define dl_cuda_scale_by dl_emu_k_scale_by
#define dl_cuda_to_f32 dl_emu_k_to_f32
#define dl_cuda_from_f32 dl_emu_k_from_f32
#include "ops/cpu/activation.h" /* ops.cu's dl_act, outside the namespace */
#include "mma.cuh"                 /* the PTX lane-layout model, outside the namespace */
namespace dlk {
#include "attention.cu"
#include "attention_mma.cu"
#include "groupnorm.cu"
#include "lora.cu"
#include "ops.cu"
} // namespace dlk

#include "device/dev_impl.h"
#include "core/dtype.h"
#include "core/error.h"

#include <fcntl.h>
#include <stdlib.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

const size_t kPage = 4096;
const size_t kHeap = (size_t)16 << 30; /* virtual size of each emulated device's memory */

struct WriteRec {
    size_t lo, hi; /* byte range within the allocation */
    int stream;
    uint64_t clock;
    const char *op;
};
struct Alloc {
    size_t size, span; /* requested bytes; pages taken (with the guard page) */
    int id;
    std::vector<WriteRec> writes;
    std::vector<WriteRec> reads; /* ranges read since they were last written (op = the reader) */
};
struct EStream {
    dl_dev_stream base;
    uint64_t clock = 0;
    std::vector<uint64_t> vc; /* per stream id: the last op of that stream ordered before ours */
    bool live = true;
};
struct EEvent {
    std::vector<uint64_t> vc;
    bool recorded = false;
    std::chrono::steady_clock::time_point t;
};

struct Emu {
    dl_dev head;
    std::mutex mu;
    int fd = -1;
    unsigned char *dev = nullptr, *shadow = nullptr;
    std::map<uintptr_t, Alloc> allocs;   /* by device address */
    std::map<size_t, size_t> free_list;  /* offset -> bytes */
    int next_alloc = 1;
    size_t limit = 0, in_use = 0;        /* DANLU_EMU_MEMORY_MIB (0: none); bytes handed out */
    std::vector<EStream *> streams;      /* by id - 1 */
    std::vector<uint64_t> host_vc;       /* what the host has waited for */
};

/* ---- the fault handler: names the allocation a host dereference touched ---- */
struct HeapReg {
    Emu *e;
};
HeapReg g_heaps[16];
struct sigaction g_old_segv;
bool g_handler_installed = false;
std::mutex g_reg_mu;

void put(const char *s) { (void)!write(2, s, strlen(s)); }
void put_hex(uintptr_t v)
{
    char b[20];
    int i = 19;
    b[i] = 0;
    do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v && i > 2);
    b[--i] = 'x';
    b[--i] = '0';
    put(b + i);
}
void put_dec(unsigned long long v)
{
    char b[24];
    int i = 23;
    b[i] = 0;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    put(b + i);
}

void segv_handler(int sig, siginfo_t *si, void *uc)
{
    const uintptr_t a = (uintptr_t)si->si_addr;
    for (HeapReg &h : g_heaps) {
        Emu *e = h.e;
        if (!e) continue;
        const bool in_dev = a >= (uintptr_t)e->dev && a < (uintptr_t)e->dev + kHeap;
        const bool in_sh = a >= (uintptr_t)e->shadow && a < (uintptr_t)e->shadow + kHeap;
        if (!in_dev && !in_sh) continue;
        const uintptr_t da = in_dev ? a : a - (uintptr_t)e->shadow + (uintptr_t)e->dev;
        if (in_dev) put("danlu emulated device: host code dereferenced device pointer ");
        else put("danlu emulated device: an emulated op or kernel touched device memory outside every live "
                 "allocation (out of bounds or after free) at device address ");
        put_hex(da);
        /* the lookup takes no lock: the process is about to die */
        auto it = e->allocs.upper_bound(da);
        if (it != e->allocs.begin()) {
            --it;
            if (da < it->first + it->second.span) {
                put(" (allocation #");
                put_dec((unsigned long long)it->second.id);
                put(" of ");
                put_dec((unsigned long long)it->second.size);
                put(" bytes, offset ");
                put_dec((unsigned long long)(da - it->first));
                put(")");
            }
        }
        put(in_dev ? ": device memory is reached only through dl_dev_* copies and ops\n" : "\n");
        break;
    }
    /* hand the fault on: the SIMT emulator's report when a kernel runs, then the previous
     * handler (AddressSanitizer's, or the default action) on the re-executed access */
    sigaction(SIGSEGV, &g_old_segv, nullptr);
    if (!(g_old_segv.sa_flags & SA_SIGINFO) && g_old_segv.sa_handler == SIG_DFL && ::simt::detail::t_worker &&
        ::simt::detail::t_worker->launch)
        ::simt::detail::crash_handler(sig, si, uc);
}

void register_heap(Emu *e)
{
    std::lock_guard<std::mutex> lk(g_reg_mu);
    for (HeapReg &h : g_heaps)
        if (!h.e) { h.e = e; break; }
    if (!g_handler_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = segv_handler;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGSEGV, &sa, &g_old_segv) == 0) g_handler_installed = true;
    }
}
void unregister_heap(Emu *e)
{
    std::lock_guard<std::mutex> lk(g_reg_mu);
    for (HeapReg &h : g_heaps)
        if (h.e == e) h.e = nullptr;
}

Emu *E(dl_dev *d) { return reinterpret_cast<Emu *>(d); }
EStream *S(dl_dev_stream *s) { return reinterpret_cast<EStream *>(s); }

/* ---- pointers and ordering ---- */
struct Arg {
    const char *name;
    const void *p;
    size_t bytes;
    bool write;
};

void vc_join(std::vector<uint64_t> &a, const std::vector<uint64_t> &b)
{
    if (a.size() < b.size()) a.resize(b.size(), 0);
    for (size_t i = 0; i < b.size(); i++) a[i] = std::max(a[i], b[i]);
}
uint64_t vc_at(const std::vector<uint64_t> &v, int id) { return (size_t)id - 1 < v.size() ? v[id - 1] : 0; }

const char *sname(Emu *e, int id)
{
    const EStream *s = e->streams[id - 1];
    return s->base.name[0] ? s->base.name : "(unnamed)";
}

/* Checks every argument of `op` on stream s (pointers inside live allocations; bytes last written
 * on another stream ordered before s). Called with e->mu held. */
dl_dev_status check_args(Emu *e, EStream *s, const char *op, const Arg *args, int n)
{
    if (!s || !s->live) return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "%s: no stream (danlu never uses the default stream)", op);
    vc_join(s->vc, e->host_vc);
    for (int i = 0; i < n; i++) {
        const Arg &a = args[i];
        if (!a.p || !a.bytes) continue;
        const uintptr_t p = (uintptr_t)a.p;
        auto it = e->allocs.upper_bound(p);
        if (it == e->allocs.begin() || (--it, p >= it->first + it->second.size))
            return dl_dev_fail(DL_DEV_ERR_BAD_POINTER, "%s: argument '%s' (%p) is not in a live device allocation", op,
                               a.name, a.p);
        const Alloc &al = it->second;
        const size_t lo = p - it->first, hi = lo + a.bytes;
        if (hi > al.size)
            return dl_dev_fail(DL_DEV_ERR_BAD_POINTER, "%s: argument '%s' needs bytes [%zu, %zu) of allocation #%d, "
                               "which has %zu", op, a.name, lo, hi, al.id, al.size);
        for (const WriteRec &w : al.writes) {
            if (w.hi <= lo || w.lo >= hi || w.stream == s->base.id) continue;
            if (vc_at(s->vc, w.stream) >= w.clock) continue;
            return dl_dev_fail(DL_DEV_ERR_UNORDERED,
                               "%s on stream %d '%s' %s argument '%s' = bytes [%zu, %zu) of allocation #%d (%zu bytes "
                               "at %p), which %s on stream %d '%s' wrote (bytes [%zu, %zu)) with no event recorded "
                               "after it and waited for by stream %d, nor a synchronisation, in between",
                               op, s->base.id, sname(e, s->base.id), a.write ? "writes" : "reads", a.name, lo, hi,
                               al.id, al.size, (void *)it->first, w.op, w.stream, sname(e, w.stream),
                               std::max(w.lo, lo), std::min(w.hi, hi), s->base.id);
        }
        if (!a.write) continue;
        for (const WriteRec &r : al.reads) { /* a write over bytes another stream may still be reading */
            if (r.hi <= lo || r.lo >= hi || r.stream == s->base.id) continue;
            if (vc_at(s->vc, r.stream) >= r.clock) continue;
            return dl_dev_fail(DL_DEV_ERR_UNORDERED,
                               "%s on stream %d '%s' writes argument '%s' = bytes [%zu, %zu) of allocation #%d (%zu "
                               "bytes at %p), which %s on stream %d '%s' reads (bytes [%zu, %zu)) with no event "
                               "recorded after it and waited for by stream %d, nor a synchronisation, in between",
                               op, s->base.id, sname(e, s->base.id), a.name, lo, hi, al.id, al.size,
                               (void *)it->first, r.op, r.stream, sname(e, r.stream), std::max(r.lo, lo),
                               std::min(r.hi, hi), s->base.id);
        }
    }
    return DL_DEV_SUCCESS;
}

/* Drops the parts of the records in v that overlap [lo, hi) (keeping what lies outside). */
void cut_range(std::vector<WriteRec> &v, size_t lo, size_t hi)
{
    std::vector<WriteRec> keep;
    keep.reserve(v.size() + 2);
    for (const WriteRec &w : v) {
        if (w.hi <= lo || w.lo >= hi) { keep.push_back(w); continue; }
        if (w.lo < lo) keep.push_back(WriteRec{w.lo, lo, w.stream, w.clock, w.op});
        if (w.hi > hi) keep.push_back(WriteRec{hi, w.hi, w.stream, w.clock, w.op});
    }
    v.swap(keep);
}

/* After the op ran: its clock; the bytes it wrote now belong to (stream, clock) and their reads
 * are forgotten (check_args ordered every one of them before this write); the bytes it only read
 * are recorded as read by (stream, clock), replacing this stream's earlier reads inside them. */
void record_writes(Emu *e, EStream *s, const char *op, const Arg *args, int n)
{
    const uint64_t clk = ++s->clock;
    for (int i = 0; i < n; i++) {
        const Arg &a = args[i];
        if (!a.p || !a.bytes) continue;
        auto it = e->allocs.upper_bound((uintptr_t)a.p);
        --it;
        Alloc &al = it->second;
        const size_t lo = (uintptr_t)a.p - it->first, hi = lo + a.bytes;
        if (a.write) {
            cut_range(al.writes, lo, hi);
            al.writes.push_back(WriteRec{lo, hi, s->base.id, clk, op});
            cut_range(al.reads, lo, hi);
            continue;
        }
        size_t k = 0;
        for (const WriteRec &r : al.reads)
            if (!(r.stream == s->base.id && r.lo >= lo && r.hi <= hi)) al.reads[k++] = r;
        al.reads.resize(k);
        al.reads.push_back(WriteRec{lo, hi, s->base.id, clk, op});
    }
}

/* Device address -> where the emulator reaches it. */
template <typename T> T *X(Emu *e, T *p)
{
    if (!p) return nullptr;
    return reinterpret_cast<T *>((unsigned char *)(uintptr_t)p - e->dev + e->shadow);
}

/* ---- element access ---- */
inline float ld(const void *p, dl_dtype t, size_t i)
{
    switch (t) {
    case DL_BF16: return dl_bf16_to_f32(((const uint16_t *)p)[i]);
    case DL_F16: return dl_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}
inline void put_el(void *p, dl_dtype t, size_t i, float v)
{
    switch (t) {
    case DL_BF16: ((uint16_t *)p)[i] = dl_f32_to_bf16(v); break;
    case DL_F16: ((uint16_t *)p)[i] = dl_f32_to_f16(v); break;
    default: ((float *)p)[i] = v; break;
    }
}

/* ================================ the table ================================ */
void emu_close(dl_dev *d)
{
    Emu *e = E(d);
    unregister_heap(e);
    for (EStream *s : e->streams) delete s;
    munmap(e->dev, kHeap);
    munmap(e->shadow, kHeap);
    close(e->fd);
    delete e;
}
const char *emu_name(const dl_dev *) { return "emulated"; }

dl_dev_status emu_synchronize(dl_dev *d)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    for (EStream *s : e->streams) {
        std::vector<uint64_t> v = s->vc;
        if (v.size() < (size_t)s->base.id) v.resize(s->base.id, 0);
        v[s->base.id - 1] = s->clock;
        vc_join(e->host_vc, v);
    }
    return DL_DEV_SUCCESS;
}

dl_dev_status emu_malloc(dl_dev *d, void **p, size_t bytes)
{
    Emu *e = E(d);
    *p = nullptr;
    if (!bytes) return DL_DEV_SUCCESS;
    std::lock_guard<std::mutex> lk(e->mu);
    if (e->limit && (bytes > e->limit || e->in_use > e->limit - bytes))
        return dl_dev_fail(DL_DEV_ERR_ALLOC, "dl_dev_malloc: out of memory: %zu bytes asked, %zu of %zu in use "
                           "(DANLU_EMU_MEMORY_MIB)", bytes, e->in_use, e->limit);
    const size_t span = (bytes + kPage - 1) / kPage * kPage + kPage; /* + a guard page */
    for (auto it = e->free_list.begin(); it != e->free_list.end(); ++it) {
        if (it->second < span) continue;
        const size_t off = it->first, rest = it->second - span;
        e->free_list.erase(it);
        if (rest) e->free_list[off + span] = rest;
        unsigned char *sh = e->shadow + off;
        if (mprotect(sh, span - kPage, PROT_READ | PROT_WRITE) != 0)
            return dl_dev_fail(DL_DEV_ERR_ALLOC, "dl_dev_malloc: mprotect failed");
        memset(sh, 0xff, bytes); /* fresh device memory is garbage: NaN */
        Alloc al;
        al.size = bytes;
        al.span = span;
        al.id = e->next_alloc++;
        e->allocs[(uintptr_t)(e->dev + off)] = al;
        e->in_use += bytes;
        *p = e->dev + off;
        return DL_DEV_SUCCESS;
    }
    return dl_dev_fail(DL_DEV_ERR_ALLOC, "dl_dev_malloc: %zu bytes: the emulated device's %zu GiB are taken", bytes,
                       kHeap >> 30);
}

dl_dev_status emu_free(dl_dev *d, void *p)
{
    emu_synchronize(d); /* cudaFree synchronises the device */
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    auto it = e->allocs.find((uintptr_t)p);
    if (it == e->allocs.end())
        return dl_dev_fail(DL_DEV_ERR_BAD_POINTER, "dl_dev_free: %p is not the start of a live device allocation", p);
    const size_t off = (unsigned char *)p - e->dev, span = it->second.span;
    e->in_use -= it->second.size;
    e->allocs.erase(it);
    mprotect(e->shadow + off, span, PROT_NONE);
    fallocate(e->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)span);
    /* coalesce with the neighbours */
    size_t lo = off, len = span;
    auto nx = e->free_list.lower_bound(off);
    if (nx != e->free_list.end() && nx->first == off + span) { len += nx->second; e->free_list.erase(nx); }
    auto pv = e->free_list.lower_bound(off);
    if (pv != e->free_list.begin()) {
        --pv;
        if (pv->first + pv->second == off) { lo = pv->first; len += pv->second; e->free_list.erase(pv); }
    }
    e->free_list[lo] = len;
    return DL_DEV_SUCCESS;
}

dl_dev_status emu_memcpy(dl_dev *d, void *dst, const void *src, size_t bytes, int kind, dl_dev_stream *s)
{
    static const char *const ops[] = {"dl_dev_memcpy_h2d", "dl_dev_memcpy_d2h", "dl_dev_memcpy_d2d"};
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    Arg a[2] = {{"src", kind == 0 ? nullptr : src, bytes, false}, {"dst", kind == 1 ? nullptr : dst, bytes, true}};
    dl_dev_status st = check_args(e, S(s), ops[kind], a, 2);
    if (st != DL_DEV_SUCCESS) return st;
    if (bytes) memmove(kind == 1 ? dst : X(e, dst), kind == 0 ? src : X(e, src), bytes);
    record_writes(e, S(s), ops[kind], a, 2);
    return DL_DEV_SUCCESS;
}

dl_dev_status emu_memset(dl_dev *d, void *dst, int byte, size_t bytes, dl_dev_stream *s)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    Arg a[1] = {{"dst", dst, bytes, true}};
    dl_dev_status st = check_args(e, S(s), "dl_dev_memset", a, 1);
    if (st != DL_DEV_SUCCESS) return st;
    if (bytes) memset(X(e, dst), byte, bytes);
    record_writes(e, S(s), "dl_dev_memset", a, 1);
    return DL_DEV_SUCCESS;
}

dl_dev_status emu_stream_create(dl_dev *d, dl_dev_stream **out, const char *name)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    EStream *s = new EStream();
    s->base.id = (int)e->streams.size() + 1;
    s->base.handle = s;
    snprintf(s->base.name, sizeof s->base.name, "%s", name ? name : "");
    e->streams.push_back(s);
    *out = &s->base;
    return DL_DEV_SUCCESS;
}
dl_dev_status emu_stream_destroy(dl_dev *d, dl_dev_stream *s)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    S(s)->live = false; /* kept: write records may still name it */
    return DL_DEV_SUCCESS;
}
std::vector<uint64_t> now_of(EStream *s)
{
    std::vector<uint64_t> v = s->vc;
    if (v.size() < (size_t)s->base.id) v.resize(s->base.id, 0);
    v[s->base.id - 1] = s->clock;
    return v;
}
dl_dev_status emu_stream_synchronize(dl_dev *d, dl_dev_stream *s)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    vc_join(e->host_vc, now_of(S(s)));
    return DL_DEV_SUCCESS;
}
dl_dev_status emu_event_create(dl_dev *, dl_dev_event **ev)
{
    *ev = reinterpret_cast<dl_dev_event *>(new EEvent());
    return DL_DEV_SUCCESS;
}
dl_dev_status emu_event_destroy(dl_dev *, dl_dev_event *ev)
{
    delete reinterpret_cast<EEvent *>(ev);
    return DL_DEV_SUCCESS;
}
dl_dev_status emu_event_record(dl_dev *d, dl_dev_event *ev, dl_dev_stream *s)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    if (!s) return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_event_record: no stream");
    EEvent *x = reinterpret_cast<EEvent *>(ev);
    vc_join(S(s)->vc, e->host_vc);
    x->vc = now_of(S(s));
    x->recorded = true;
    x->t = std::chrono::steady_clock::now();
    return DL_DEV_SUCCESS;
}
dl_dev_status emu_stream_wait_event(dl_dev *d, dl_dev_stream *s, dl_dev_event *ev)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    vc_join(S(s)->vc, reinterpret_cast<EEvent *>(ev)->vc); /* an unrecorded event: no dependency, as CUDA */
    return DL_DEV_SUCCESS;
}
dl_dev_status emu_event_synchronize(dl_dev *d, dl_dev_event *ev)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    vc_join(e->host_vc, reinterpret_cast<EEvent *>(ev)->vc);
    return DL_DEV_SUCCESS;
}
dl_dev_status emu_event_elapsed_ms(dl_dev *, float *ms, dl_dev_event *a, dl_dev_event *b)
{
    EEvent *x = reinterpret_cast<EEvent *>(a), *y = reinterpret_cast<EEvent *>(b);
    if (!x->recorded || !y->recorded)
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "dl_dev_event_elapsed_ms: an event was never recorded");
    *ms = std::chrono::duration<float, std::milli>(y->t - x->t).count();
    return DL_DEV_SUCCESS;
}

/* ---- GEMM: column-major, cuBLASLt's rules ---- */
size_t span_bytes(int64_t rows, int64_t cols, int64_t ld, int batch, int64_t stride, dl_dtype t)
{
    if (rows <= 0 || cols <= 0) return 0;
    return (size_t)(((int64_t)(batch - 1) * stride + (cols - 1) * ld + rows) * (int64_t)dl_dtype_size(t));
}
inline float gelu_tanh(float x)
{
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

dl_dev_status emu_gemm(dl_dev *d, dl_dev_stream *s, const dl_dev_gemm_desc *g, float alpha, const void *A,
                       const void *B, float beta, void *C, void *ws, size_t ws_bytes)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const int batch = g->batch ? g->batch : 1;
    const int64_t m = g->m, n = g->n, k = g->k;
    const bool ta = g->transa == DL_DEV_OP_T, tb = g->transb == DL_DEV_OP_T;
    const bool has_bias = g->epilogue == DL_DEV_EPI_BIAS || g->epilogue == DL_DEV_EPI_GELU_BIAS;
    Arg a[5] = {
        {"A", A, k ? span_bytes(ta ? k : m, ta ? m : k, g->lda, batch, g->stride_a, g->ab_type) : 0, false},
        {"B", B, k ? span_bytes(tb ? n : k, tb ? k : n, g->ldb, batch, g->stride_b, g->ab_type) : 0, false},
        {"C (read: beta != 0)", beta != 0.0f ? C : nullptr, span_bytes(m, n, g->ldc, batch, g->stride_c, g->c_type), false},
        {"bias", has_bias ? g->bias : nullptr, (size_t)m * dl_dtype_size(g->c_type), false},
        {"D", C, span_bytes(m, n, g->ldc, batch, g->stride_c, g->c_type), true},
    };
    dl_dev_status st = check_args(e, S(s), "dl_dev_gemm", a, 5);
    if (st != DL_DEV_SUCCESS) return st;
    (void)ws;
    (void)ws_bytes;
    std::vector<float> oa((size_t)m * k), ob((size_t)n * k); /* op(A) rows, op(B) columns, k contiguous */
    const bool bf16 = g->compute == DL_BF16; /* FAST_16BF: the fp32 inputs rounded to bf16 */
    for (int bi = 0; bi < batch; bi++) {
        const unsigned char *pa = X(e, (const unsigned char *)A) + (size_t)bi * g->stride_a * dl_dtype_size(g->ab_type);
        const unsigned char *pb = X(e, (const unsigned char *)B) + (size_t)bi * g->stride_b * dl_dtype_size(g->ab_type);
        unsigned char *pc = X(e, (unsigned char *)C) + (size_t)bi * g->stride_c * dl_dtype_size(g->c_type);
        for (int64_t i = 0; i < m; i++)
            for (int64_t kk = 0; kk < k; kk++)
                oa[i * k + kk] = ld(pa, g->ab_type, ta ? (size_t)(i * g->lda + kk) : (size_t)(kk * g->lda + i));
        for (int64_t j = 0; j < n; j++)
            for (int64_t kk = 0; kk < k; kk++)
                ob[j * k + kk] = ld(pb, g->ab_type, tb ? (size_t)(kk * g->ldb + j) : (size_t)(j * g->ldb + kk));
        if (bf16) {
            for (float &v : oa) v = dl_bf16_to_f32(dl_f32_to_bf16(v));
            for (float &v : ob) v = dl_bf16_to_f32(dl_f32_to_bf16(v));
        }
        const void *bias = has_bias ? X(e, g->bias) : nullptr;
        for (int64_t j = 0; j < n; j++)
            for (int64_t i = 0; i < m; i++) {
                double acc = 0.0;
                const float *x = &oa[i * k], *y = &ob[j * k];
                for (int64_t kk = 0; kk < k; kk++) acc += (double)x[kk] * y[kk];
                const size_t ci = (size_t)(j * g->ldc + i);
                float v = alpha * (float)acc;
                if (beta != 0.0f) v += beta * ld(pc, g->c_type, ci); /* beta == 0: C is never read */
                if (bias) v += ld(bias, g->c_type, (size_t)i);
                if (g->epilogue == DL_DEV_EPI_GELU || g->epilogue == DL_DEV_EPI_GELU_BIAS) v = gelu_tanh(v);
                put_el(pc, g->c_type, ci, v);
            }
    }
    record_writes(e, S(s), "dl_dev_gemm", a, 5);
    return DL_DEV_SUCCESS;
}

/* ---- convolution: NHWC / KRSC, cuDNN's rules ---- */
const int kConvAlgos[3] = {8, 6, 7}; /* cuDNN's algorithm counts per direction */

size_t conv_ws_need(dl_dev_conv_dir dir, const dl_dev_tensor_desc *x, const dl_dev_filter_desc *w)
{
    /* the emulator accumulates backward outputs in fp32 workspace, as a real algorithm might */
    if (dir == DL_DEV_CONV_BWD_DATA) return (size_t)x->n * x->h * x->w * x->c * 4;
    if (dir == DL_DEV_CONV_BWD_FILTER) return (size_t)w->k * w->r * w->s * w->c * 4;
    return 0;
}

dl_dev_status emu_conv_algo(dl_dev *, dl_dev_conv_dir dir, const dl_dev_tensor_desc *x, const dl_dev_filter_desc *w,
                            const dl_dev_conv_desc *, const dl_dev_tensor_desc *, int *algo, size_t *ws_bytes)
{
    *algo = dir == DL_DEV_CONV_FWD ? 1 : 1; /* IMPLICIT_PRECOMP_GEMM / ALGO_1 */
    *ws_bytes = conv_ws_need(dir, x, w);
    return DL_DEV_SUCCESS;
}

dl_dev_status emu_conv(dl_dev *d, dl_dev_stream *s, dl_dev_conv_dir dir, float alpha, const dl_dev_tensor_desc *xd,
                       const void *x, const dl_dev_filter_desc *wd, const void *w, const dl_dev_tensor_desc *yd,
                       const void *y, const dl_dev_conv_desc *c, int algo, void *ws, size_t ws_bytes, float beta,
                       void *out)
{
    static const char *const names[] = {"dl_dev_conv_forward", "dl_dev_conv_backward_data",
                                        "dl_dev_conv_backward_filter"};
    const char *op = names[dir];
    if (algo < 0 || algo >= kConvAlgos[dir])
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "%s: algorithm %d out of range", op, algo);
    const size_t need = conv_ws_need(dir, xd, wd);
    if (ws_bytes < need || (need && !ws))
        return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "%s: workspace of %zu bytes, the algorithm needs %zu", op, ws_bytes,
                           need);
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const size_t es = dl_dtype_size(xd->dt);
    const size_t nx = (size_t)xd->n * xd->h * xd->w * xd->c, nw = (size_t)wd->k * wd->r * wd->s * wd->c,
                 ny = (size_t)yd->n * yd->h * yd->w * yd->c;
    const size_t nout = dir == DL_DEV_CONV_FWD ? ny : dir == DL_DEV_CONV_BWD_DATA ? nx : nw;
    const void *in1 = dir == DL_DEV_CONV_BWD_DATA ? y : x;
    const void *in2 = dir == DL_DEV_CONV_BWD_FILTER ? y : w;
    Arg a[5] = {
        {dir == DL_DEV_CONV_BWD_DATA ? "dy" : "x", in1, (dir == DL_DEV_CONV_BWD_DATA ? ny : nx) * es, false},
        {dir == DL_DEV_CONV_BWD_FILTER ? "dy" : "w", in2, (dir == DL_DEV_CONV_BWD_FILTER ? ny : nw) * es, false},
        {"output (read: beta != 0)", beta != 0.0f ? out : nullptr, nout * es, false},
        {"workspace", need ? ws : nullptr, need, true},
        {"output", out, nout * es, true},
    };
    dl_dev_status st = check_args(e, S(s), op, a, 5);
    if (st != DL_DEV_SUCCESS) return st;
    const dl_dtype t = xd->dt;
    const int N = xd->n, H = xd->h, W = xd->w, Ci = xd->c, K = wd->k, R = wd->r, Sx = wd->s, Ho = yd->h, Wo = yd->w;
    const int sh = c->stride_h ? c->stride_h : 1, sw = c->stride_w ? c->stride_w : 1;
    const int dh = c->dil_h ? c->dil_h : 1, dw = c->dil_w ? c->dil_w : 1;
    std::vector<float> fx(nx), fw(nw), fy(ny);
    if (dir != DL_DEV_CONV_BWD_DATA) for (size_t i = 0; i < nx; i++) fx[i] = ld(X(e, x), t, i);
    if (dir != DL_DEV_CONV_BWD_FILTER) for (size_t i = 0; i < nw; i++) fw[i] = ld(X(e, w), t, i);
    if (dir != DL_DEV_CONV_FWD) for (size_t i = 0; i < ny; i++) fy[i] = ld(X(e, y), t, i);
    std::vector<double> acc(dir == DL_DEV_CONV_FWD ? 0 : nout, 0.0);
    unsigned char *o = X(e, (unsigned char *)out);
    for (int nb = 0; nb < N; nb++)
        for (int ho = 0; ho < Ho; ho++)
            for (int wo = 0; wo < Wo; wo++)
                for (int kk = 0; kk < K; kk++) {
                    const size_t yi = (((size_t)nb * Ho + ho) * Wo + wo) * K + kk;
                    double sum = 0.0;
                    for (int r = 0; r < R; r++) {
                        const int hi = ho * sh - c->pad_h + r * dh;
                        if (hi < 0 || hi >= H) continue;
                        for (int q = 0; q < Sx; q++) {
                            const int wi = wo * sw - c->pad_w + q * dw;
                            if (wi < 0 || wi >= W) continue;
                            const size_t xo = (((size_t)nb * H + hi) * W + wi) * Ci, wo_ = (((size_t)kk * R + r) * Sx + q) * Ci;
                            if (dir == DL_DEV_CONV_FWD) {
                                float part = 0.0f;
                                for (int ci = 0; ci < Ci; ci++) part += fx[xo + ci] * fw[wo_ + ci];
                                sum += part;
                            } else if (dir == DL_DEV_CONV_BWD_DATA) {
                                const float g = fy[yi];
                                for (int ci = 0; ci < Ci; ci++) acc[xo + ci] += (double)(g * fw[wo_ + ci]);
                            } else {
                                const float g = fy[yi];
                                for (int ci = 0; ci < Ci; ci++) acc[wo_ + ci] += (double)(g * fx[xo + ci]);
                            }
                        }
                    }
                    if (dir == DL_DEV_CONV_FWD) {
                        float v = alpha * (float)sum;
                        if (beta != 0.0f) v += beta * ld(o, t, yi);
                        put_el(o, t, yi, v);
                    }
                }
    if (dir != DL_DEV_CONV_FWD) {
        float *wsf = X(e, (float *)ws);
        for (size_t i = 0; i < nout; i++) wsf[i] = (float)acc[i];
        for (size_t i = 0; i < nout; i++) {
            float v = alpha * wsf[i];
            if (beta != 0.0f) v += beta * ld(o, t, i);
            put_el(o, t, i, v);
        }
    }
    record_writes(e, S(s), op, a, 5);
    return DL_DEV_SUCCESS;
}

/* ---- attention ---- */
size_t tok_bytes(int N, int T, int64_t ld, int H, int dd, dl_dtype t)
{
    return (size_t)(((int64_t)N * T - 1) * ld + (int64_t)H * dd) * dl_dtype_size(t);
}

dl_dev_status emu_sdpa_forward(dl_dev *d, dl_dev_stream *s, int kernel, const dl_dev_sdpa_desc *a, const void *q,
                               const void *k, const void *v, void *o, float *lse)
{
    const char *op = kernel ? "dl_dev_attention_forward" : "dl_dev_sdpa_forward";
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const dl_dtype t = a->dt;
    const int N = a->N, H = a->H, Tq = a->Tq, Tk = a->Tk, D = a->d;
    Arg args[5] = {
        {"q", q, tok_bytes(N, Tq, a->ldq, H, D, t), false}, {"k", k, tok_bytes(N, Tk, a->ldk, H, D, t), false},
        {"v", v, tok_bytes(N, Tk, a->ldv, H, D, t), false}, {"o", o, tok_bytes(N, Tq, a->ldo, H, D, t), true},
        {"lse", lse, (size_t)N * H * Tq * 4, true},
    };
    dl_dev_status st = check_args(e, S(s), op, args, 5);
    if (st != DL_DEV_SUCCESS) return st;
    if (kernel == 2 && dlk::dl_cuda_attention_forward_mma(t, N, H, Tq, Tk, D, a->scale, X(e, q), a->ldq, X(e, k),
                                                          a->ldk, X(e, v), a->ldv, X(e, o), a->ldo, X(e, lse),
                                                          nullptr) == 0) {
        e->head.attn_mma_calls++; /* the sm_80+ kernels (dl_dev_sm ≥ 80, bf16) */
    } else if (kernel) {
        int rc = dlk::dl_cuda_attention_forward(t, N, H, Tq, Tk, D, a->scale, X(e, q), a->ldq, X(e, k), a->ldk,
                                                X(e, v), a->ldv, X(e, o), a->ldo, X(e, lse), nullptr);
        if (rc) return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "%s: the kernel refuses (dtype %s, d %d)", op,
                                   dl_dtype_name(t), D);
    } else {
        const void *Q = X(e, q), *K = X(e, k), *V = X(e, v);
        void *O = X(e, o);
        float *L = X(e, lse);
        std::vector<double> sc(Tk), acc(D);
        for (int nb = 0; nb < N; nb++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < Tq; i++) {
                    const size_t qo = ((size_t)nb * Tq + i) * a->ldq + (size_t)h * D;
                    double mx = -INFINITY;
                    for (int j = 0; j < Tk; j++) {
                        const size_t ko = ((size_t)nb * Tk + j) * a->ldk + (size_t)h * D;
                        double dot = 0.0;
                        for (int c = 0; c < D; c++) dot += (double)ld(Q, t, qo + c) * ld(K, t, ko + c);
                        sc[j] = dot * a->scale;
                        mx = std::max(mx, sc[j]);
                    }
                    double sum = 0.0;
                    for (int j = 0; j < Tk; j++) sum += (sc[j] = exp(sc[j] - mx));
                    std::fill(acc.begin(), acc.end(), 0.0);
                    for (int j = 0; j < Tk; j++) {
                        const size_t vo = ((size_t)nb * Tk + j) * a->ldv + (size_t)h * D;
                        for (int c = 0; c < D; c++) acc[c] += sc[j] * ld(V, t, vo + c);
                    }
                    const size_t oo = ((size_t)nb * Tq + i) * a->ldo + (size_t)h * D;
                    for (int c = 0; c < D; c++) put_el(O, t, oo + c, (float)(acc[c] / sum));
                    if (L) L[((size_t)nb * H + h) * Tq + i] = (float)(mx + log(sum));
                }
    }
    record_writes(e, S(s), op, args, 5);
    return DL_DEV_SUCCESS;
}

dl_dev_status emu_sdpa_backward(dl_dev *d, dl_dev_stream *s, int kernel, const dl_dev_sdpa_desc *a, const void *q,
                                const void *k, const void *v, const void *o, const void *dout, const float *lse,
                                float *delta, void *dq, void *dk, void *dv)
{
    const char *op = kernel ? "dl_dev_attention_backward" : "dl_dev_sdpa_backward";
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const dl_dtype t = a->dt;
    const int N = a->N, H = a->H, Tq = a->Tq, Tk = a->Tk, D = a->d;
    const size_t bq = tok_bytes(N, Tq, a->ldq, H, D, t), bk = tok_bytes(N, Tk, a->ldk, H, D, t),
                 bv = tok_bytes(N, Tk, a->ldv, H, D, t), bo = tok_bytes(N, Tq, a->ldo, H, D, t),
                 bs = (size_t)N * H * Tq * 4;
    Arg args[10] = {
        {"q", q, bq, false}, {"k", k, bk, false}, {"v", v, bv, false}, {"o", o, bo, false},
        {"dout", dout, bo, false}, {"lse", lse, bs, false}, {"delta", delta, bs, true},
        {"dq", dq, bq, true}, {"dk", dk, bk, true}, {"dv", dv, bv, true},
    };
    dl_dev_status st = check_args(e, S(s), op, args, 10);
    if (st != DL_DEV_SUCCESS) return st;
    std::vector<uint64_t> mma_ws; /* dQ's fp32 accumulator and counters (the real device: cudaMallocAsync) */
    if (kernel == 2 && dq)
        mma_ws.resize((dlk::dl_cuda_attention_backward_mma_workspace_size(N, H, Tq, Tk, D) + 7) / 8);
    if (kernel == 2 && dlk::dl_cuda_attention_backward_mma(t, N, H, Tq, Tk, D, a->scale, X(e, q), a->ldq, X(e, k),
                                                           a->ldk, X(e, v), a->ldv, X(e, o), X(e, dout), a->ldo,
                                                           X(e, lse), X(e, delta), X(e, dq), X(e, dk), X(e, dv), 1,
                                                           mma_ws.empty() ? nullptr : mma_ws.data(), nullptr) == 0) {
        e->head.attn_mma_calls++;
    } else if (kernel) {
        int rc = dlk::dl_cuda_attention_backward(t, N, H, Tq, Tk, D, a->scale, X(e, q), a->ldq, X(e, k), a->ldk,
                                                 X(e, v), a->ldv, X(e, o), X(e, dout), a->ldo, X(e, lse),
                                                 X(e, delta), X(e, dq), X(e, dk), X(e, dv), nullptr);
        if (rc) return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "%s: the kernel refuses (dtype %s, d %d)", op,
                                   dl_dtype_name(t), D);
    } else {
        const void *Q = X(e, q), *K = X(e, k), *V = X(e, v), *O = X(e, o), *dO = X(e, dout);
        const float *L = X(e, lse);
        float *Dl = X(e, delta);
        const size_t nq = (size_t)N * Tq * H * D, nk = (size_t)N * Tk * H * D;
        std::vector<double> gq(nq, 0.0), gk(nk, 0.0), gv(nk, 0.0);
        auto qi = [&](int nb, int i, int h) { return ((size_t)nb * Tq + i) * H * D + (size_t)h * D; };
        auto ki = [&](int nb, int j, int h) { return ((size_t)nb * Tk + j) * H * D + (size_t)h * D; };
        for (int nb = 0; nb < N; nb++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < Tq; i++) {
                    const size_t qo = ((size_t)nb * Tq + i) * a->ldq + (size_t)h * D;
                    const size_t oo = ((size_t)nb * Tq + i) * a->ldo + (size_t)h * D;
                    double del = 0.0;
                    for (int c = 0; c < D; c++) del += (double)ld(dO, t, oo + c) * ld(O, t, oo + c);
                    if (Dl) Dl[((size_t)nb * H + h) * Tq + i] = (float)del;
                    const double l = L[((size_t)nb * H + h) * Tq + i];
                    for (int j = 0; j < Tk; j++) {
                        const size_t ko = ((size_t)nb * Tk + j) * a->ldk + (size_t)h * D;
                        const size_t vo = ((size_t)nb * Tk + j) * a->ldv + (size_t)h * D;
                        double sdot = 0.0, dp = 0.0;
                        for (int c = 0; c < D; c++) {
                            sdot += (double)ld(Q, t, qo + c) * ld(K, t, ko + c);
                            dp += (double)ld(dO, t, oo + c) * ld(V, t, vo + c);
                        }
                        const double p = exp(sdot * a->scale - l), ds = p * (dp - del) * a->scale;
                        for (int c = 0; c < D; c++) {
                            gq[qi(nb, i, h) + c] += ds * ld(K, t, ko + c);
                            gk[ki(nb, j, h) + c] += ds * ld(Q, t, qo + c);
                            gv[ki(nb, j, h) + c] += p * ld(dO, t, oo + c);
                        }
                    }
                }
        for (int nb = 0; nb < N; nb++)
            for (int h = 0; h < H; h++) {
                for (int i = 0; dq && i < Tq; i++)
                    for (int c = 0; c < D; c++)
                        put_el(X(e, dq), t, ((size_t)nb * Tq + i) * a->ldq + (size_t)h * D + c, (float)gq[qi(nb, i, h) + c]);
                for (int j = 0; j < Tk; j++)
                    for (int c = 0; c < D; c++) {
                        if (dk) put_el(X(e, dk), t, ((size_t)nb * Tk + j) * a->ldk + (size_t)h * D + c, (float)gk[ki(nb, j, h) + c]);
                        if (dv) put_el(X(e, dv), t, ((size_t)nb * Tk + j) * a->ldv + (size_t)h * D + c, (float)gv[ki(nb, j, h) + c]);
                    }
            }
    }
    record_writes(e, S(s), op, args, 10);
    return DL_DEV_SUCCESS;
}

/* ---- danlu's kernels through the SIMT emulator ---- */
dl_dev_status kernel_rc(const char *op, int rc)
{
    if (rc) return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "%s: the launcher refuses its arguments", op);
    cudaError_t ce = cudaGetLastError();
    if (ce != cudaSuccess) return dl_dev_fail(DL_DEV_ERR_EXEC, "%s: %s", op, cudaGetErrorString(ce));
    return DL_DEV_SUCCESS;
}

dl_dev_status emu_gn_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G, float eps,
                             int silu, const void *x, const float *gamma, const float *beta, void *y, float *mean,
                             float *rstd, void *ws)
{
    const char *op = "dl_dev_groupnorm_forward";
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const size_t nx = (size_t)N * HW * C * dl_dtype_size(dt), ns = (size_t)N * G * 4;
    Arg a[7] = {{"x", x, nx, false}, {"gamma", gamma, (size_t)C * 4, false}, {"beta", beta, (size_t)C * 4, false},
                {"ws", ws, dlk::dl_cuda_groupnorm_workspace_size(N, HW, C, G), true}, {"y", y, nx, true},
                {"mean", mean, ns, true}, {"rstd", rstd, ns, true}};
    dl_dev_status st = check_args(e, S(s), op, a, 7);
    if (st != DL_DEV_SUCCESS) return st;
    st = kernel_rc(op, dlk::dl_cuda_groupnorm_forward(dt, N, HW, C, G, eps, silu, X(e, x), X(e, gamma), X(e, beta),
                                                      X(e, y), X(e, mean), X(e, rstd), X(e, ws), nullptr));
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, 7);
    return st;
}
dl_dev_status emu_gn_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int N, int64_t HW, int C, int G, int silu,
                              const void *x, const float *gamma, const float *beta, const float *mean,
                              const float *rstd, const void *dy, void *dx, float *dgamma, float *dbeta, void *ws)
{
    const char *op = "dl_dev_groupnorm_backward";
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const size_t nx = (size_t)N * HW * C * dl_dtype_size(dt), ns = (size_t)N * G * 4;
    Arg a[10] = {{"x", x, nx, false}, {"gamma", gamma, (size_t)C * 4, false}, {"beta", beta, (size_t)C * 4, false},
                 {"mean", mean, ns, false}, {"rstd", rstd, ns, false}, {"dy", dy, nx, false},
                 {"ws", ws, dlk::dl_cuda_groupnorm_workspace_size(N, HW, C, G), true}, {"dx", dx, nx, true},
                 {"dgamma", dgamma, (size_t)C * 4, true}, {"dbeta", dbeta, (size_t)C * 4, true}};
    dl_dev_status st = check_args(e, S(s), op, a, 10);
    if (st != DL_DEV_SUCCESS) return st;
    st = kernel_rc(op, dlk::dl_cuda_groupnorm_backward(dt, N, HW, C, G, silu, X(e, x), X(e, gamma), X(e, beta),
                                                       X(e, mean), X(e, rstd), X(e, dy), X(e, dx), X(e, dgamma),
                                                       X(e, dbeta), X(e, ws), nullptr));
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, 10);
    return st;
}
dl_dev_status emu_lora_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                               float scale, const void *x, const void *W, const void *bias, const float *A,
                               const float *B, float *u, void *y)
{
    const char *op = "dl_dev_lora_forward";
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const size_t es = dl_dtype_size(dt);
    Arg a[7] = {{"x", x, (size_t)M * in * es, false}, {"W", W, (size_t)out * in * es, false},
                {"bias", bias, (size_t)out * es, false}, {"A", A, (size_t)rank * in * 4, false},
                {"B", B, (size_t)out * rank * 4, false}, {"u", u, (size_t)M * rank * 4, true},
                {"y", y, (size_t)M * out * es, true}};
    dl_dev_status st = check_args(e, S(s), op, a, 7);
    if (st != DL_DEV_SUCCESS) return st;
    st = kernel_rc(op, dlk::dl_cuda_lora_forward(dt, nullptr, M, in, out, rank, scale, X(e, x), X(e, W), X(e, bias),
                                                 X(e, A), X(e, B), X(e, u), X(e, y), nullptr));
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, 7);
    return st;
}
dl_dev_status emu_lora_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int in, int out, int rank,
                                float scale, const void *x, const void *W, const float *A, const float *B,
                                const void *dy, void *dx, float *dA, float *dB, int accumulate, float *ws)
{
    const char *op = "dl_dev_lora_backward";
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const size_t es = dl_dtype_size(dt);
    Arg a[10] = {{"x", x, (size_t)M * in * es, false}, {"W", W, (size_t)out * in * es, false},
                 {"A", A, (size_t)rank * in * 4, false}, {"B", B, (size_t)out * rank * 4, false},
                 {"dy", dy, (size_t)M * out * es, false},
                 {"dA (read: accumulate)", accumulate ? dA : nullptr, (size_t)rank * in * 4, false},
                 {"ws", ws, dlk::dl_cuda_lora_workspace_size(M, in, out, rank), true},
                 {"dx", dx, (size_t)M * in * es, true}, {"dA", dA, (size_t)rank * in * 4, true},
                 {"dB", dB, (size_t)out * rank * 4, true}};
    dl_dev_status st = check_args(e, S(s), op, a, 10);
    if (st != DL_DEV_SUCCESS) return st;
    st = kernel_rc(op, dlk::dl_cuda_lora_backward(dt, nullptr, M, in, out, rank, scale, X(e, x), X(e, W), X(e, A),
                                                  X(e, B), X(e, dy), X(e, dx), X(e, dA), X(e, dB), accumulate,
                                                  X(e, ws), nullptr));
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, 10);
    return st;
}
dl_dev_status emu_lora_merge(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int out, int in, int rank, float scale,
                             void *W, const float *A, const float *B, int unmerge)
{
    const char *op = "dl_dev_lora_merge";
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    const size_t nw = (size_t)out * in * dl_dtype_size(dt);
    Arg a[4] = {{"W (read)", W, nw, false}, {"A", A, (size_t)rank * in * 4, false},
                {"B", B, (size_t)out * rank * 4, false}, {"W", W, nw, true}};
    dl_dev_status st = check_args(e, S(s), op, a, 4);
    if (st != DL_DEV_SUCCESS) return st;
    int rc = unmerge ? dlk::dl_cuda_lora_unmerge(dt, out, in, rank, scale, X(e, W), X(e, A), X(e, B), nullptr)
                     : dlk::dl_cuda_lora_merge(dt, out, in, rank, scale, X(e, W), X(e, A), X(e, B), nullptr);
    st = kernel_rc(op, rc);
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, 4);
    return st;
}

/* ---- kernels/ops.cu: element-wise, normalisation, loss and optimiser kernels ----
 * Each entry lists its pointer arguments with the exact bytes the op reads or writes (an output
 * that the op also reads is listed twice, read and write), then runs the launcher on the shadow
 * addresses; run_kernel does the checks, the launch and the write records. */
template <typename F>
dl_dev_status run_kernel(dl_dev *d, dl_dev_stream *s, const char *op, const Arg *a, int n, F launch)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    dl_dev_status st = check_args(e, S(s), op, a, n);
    if (st != DL_DEV_SUCCESS) return st;
    st = kernel_rc(op, launch(e));
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, n);
    return st;
}
inline size_t nbytes(int64_t count, dl_dtype dt) { return (size_t)count * dl_dtype_size(dt); }

dl_dev_status emu_act_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x, void *y)
{
    Arg a[2] = {{"x", x, nbytes(n, dt), false}, {"y", y, nbytes(n, dt), true}};
    return run_kernel(d, s, "dl_dev_act_forward", a, 2,
                      [&](Emu *e) { return dlk::dl_cuda_act_forward(dt, act, n, X(e, x), X(e, y), nullptr); });
}
dl_dev_status emu_act_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int act, int64_t n, const void *x,
                               const void *dy, void *dx)
{
    Arg a[3] = {{"x", x, nbytes(n, dt), false}, {"dy", dy, nbytes(n, dt), false}, {"dx", dx, nbytes(n, dt), true}};
    return run_kernel(d, s, "dl_dev_act_backward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_act_backward(dt, act, n, X(e, x), X(e, dy), X(e, dx), nullptr);
    });
}
dl_dev_status emu_geglu_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                void *y)
{
    Arg a[2] = {{"x", x, nbytes(M * 2 * D, dt), false}, {"y", y, nbytes(M * D, dt), true}};
    return run_kernel(d, s, "dl_dev_geglu_forward", a, 2,
                      [&](Emu *e) { return dlk::dl_cuda_geglu_forward(dt, M, D, X(e, x), X(e, y), nullptr); });
}
dl_dev_status emu_geglu_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t D, const void *x,
                                 const void *dy, void *dx)
{
    Arg a[3] = {{"x", x, nbytes(M * 2 * D, dt), false}, {"dy", dy, nbytes(M * D, dt), false},
                {"dx", dx, nbytes(M * 2 * D, dt), true}};
    return run_kernel(d, s, "dl_dev_geglu_backward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_geglu_backward(dt, M, D, X(e, x), X(e, dy), X(e, dx), nullptr);
    });
}
dl_dev_status emu_add(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *x, const void *b, void *y)
{
    Arg a[3] = {{"a", x, nbytes(n, dt), false}, {"b", b, nbytes(n, dt), false}, {"y", y, nbytes(n, dt), true}};
    return run_kernel(d, s, "dl_dev_add", a, 3,
                      [&](Emu *e) { return dlk::dl_cuda_add(dt, n, X(e, x), X(e, b), X(e, y), nullptr); });
}
dl_dev_status emu_scale(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y)
{
    Arg a[2] = {{"x", x, nbytes(n, dt), false}, {"y", y, nbytes(n, dt), true}};
    return run_kernel(d, s, "dl_dev_scale", a, 2,
                      [&](Emu *e) { return dlk::dl_cuda_scale(dt, n, alpha, X(e, x), X(e, y), nullptr); });
}
dl_dev_status emu_axpy(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, float alpha, const void *x, void *y)
{
    Arg a[3] = {{"x", x, nbytes(n, dt), false}, {"y (read)", y, nbytes(n, dt), false}, {"y", y, nbytes(n, dt), true}};
    return run_kernel(d, s, "dl_dev_axpy", a, 3,
                      [&](Emu *e) { return dlk::dl_cuda_axpy(dt, n, alpha, X(e, x), X(e, y), nullptr); });
}
dl_dev_status emu_add_bcast_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                    int per_sample, const void *x, const float *v, void *y)
{
    const size_t nx = nbytes(N * HW * C, dt);
    Arg a[3] = {{"x", x, nx, false}, {"v", N * HW != 0 ? v : nullptr, (size_t)((per_sample ? N : 1) * C) * 4, false},
                {"y", y, nx, true}};
    return run_kernel(d, s, "dl_dev_add_bcast_forward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_add_bcast_forward(dt, N, HW, C, per_sample, X(e, x), X(e, v), X(e, y), nullptr);
    });
}
dl_dev_status emu_add_bcast_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t HW, int64_t C,
                                     int per_sample, const void *dy, void *dx, float *dv)
{
    const size_t nx = nbytes(N * HW * C, dt);
    Arg a[3] = {{"dy", dy, nx, false}, {"dx", dx != dy ? dx : nullptr, nx, true}, /* dx == dy: nothing written */
                {"dv", dv, (size_t)((per_sample ? N : 1) * C) * 4, true}};
    return run_kernel(d, s, "dl_dev_add_bcast_backward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_add_bcast_backward(dt, N, HW, C, per_sample, X(e, dy), X(e, dx), X(e, dv), nullptr);
    });
}
dl_dev_status emu_concat_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1, int64_t C2,
                                 const void *x, const void *b, void *y)
{
    Arg a[3] = {{"a", x, nbytes(M * C1, dt), false}, {"b", b, nbytes(M * C2, dt), false},
                {"y", y, nbytes(M * (C1 + C2), dt), true}};
    return run_kernel(d, s, "dl_dev_concat_channels_forward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_concat_channels_forward(dt, M, C1, C2, X(e, x), X(e, b), X(e, y), nullptr);
    });
}
dl_dev_status emu_concat_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C1, int64_t C2,
                                  const void *dy, void *da, void *db)
{
    Arg a[3] = {{"dy", da || db ? dy : nullptr, nbytes(M * (C1 + C2), dt), false},
                {"da", da, nbytes(M * C1, dt), true}, {"db", db, nbytes(M * C2, dt), true}};
    return run_kernel(d, s, "dl_dev_concat_channels_backward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_concat_channels_backward(dt, M, C1, C2, X(e, dy), X(e, da), X(e, db), nullptr);
    });
}
dl_dev_status emu_upsample_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                                   int64_t C, const void *x, void *y)
{
    const size_t nx = nbytes(N * H * W * C, dt);
    Arg a[2] = {{"x", x, nx, false}, {"y", y, 4 * nx, true}};
    return run_kernel(d, s, "dl_dev_upsample_nearest2x_forward", a, 2, [&](Emu *e) {
        return dlk::dl_cuda_upsample_nearest2x_forward(dt, N, H, W, C, X(e, x), X(e, y), nullptr);
    });
}
dl_dev_status emu_upsample_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t H, int64_t W,
                                    int64_t C, const void *dy, void *dx)
{
    const size_t nx = nbytes(N * H * W * C, dt);
    Arg a[2] = {{"dy", dy, 4 * nx, false}, {"dx", dx, nx, true}};
    return run_kernel(d, s, "dl_dev_upsample_nearest2x_backward", a, 2, [&](Emu *e) {
        return dlk::dl_cuda_upsample_nearest2x_backward(dt, N, H, W, C, X(e, dy), X(e, dx), nullptr);
    });
}
dl_dev_status emu_pad2d(dl_dev *d, dl_dev_stream *s, int bwd, dl_dtype dt, int64_t N, int64_t H, int64_t W, int64_t C,
                        int top, int left, int bottom, int right, const void *src, void *dst)
{
    const size_t ni = nbytes(N * H * W * C, dt), no = nbytes(N * (H + top + bottom) * (W + left + right) * C, dt);
    Arg a[2] = {{bwd ? "dy" : "x", src, bwd ? no : ni, false}, {bwd ? "dx" : "y", dst, bwd ? ni : no, true}};
    return run_kernel(d, s, bwd ? "dl_dev_pad2d_backward" : "dl_dev_pad2d_forward", a, 2, [&](Emu *e) {
        return bwd ? dlk::dl_cuda_pad2d_backward(dt, N, H, W, C, top, left, bottom, right, X(e, src), X(e, dst), nullptr)
                   : dlk::dl_cuda_pad2d_forward(dt, N, H, W, C, top, left, bottom, right, X(e, src), X(e, dst), nullptr);
    });
}
dl_dev_status emu_timestep_embedding(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t dim, const float *t,
                                     int flip, float shift, float scale, float max_period, void *out)
{
    Arg a[2] = {{"t", t, (size_t)N * 4, false}, {"out", out, nbytes(N * dim, dt), true}};
    return run_kernel(d, s, "dl_dev_timestep_embedding", a, 2, [&](Emu *e) {
        return dlk::dl_cuda_timestep_embedding(dt, N, dim, X(e, t), flip, shift, scale, max_period, X(e, out), nullptr);
    });
}
dl_dev_status emu_layernorm_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C, float eps,
                                    const void *x, const float *gamma, const float *beta, void *y, float *mean,
                                    float *rstd)
{
    const size_t nx = nbytes(M * C, dt), nc = M ? (size_t)C * 4 : 0;
    Arg a[6] = {{"x", x, nx, false}, {"gamma", gamma, nc, false}, {"beta", beta, nc, false}, {"y", y, nx, true},
                {"mean", mean, (size_t)M * 4, true}, {"rstd", rstd, (size_t)M * 4, true}};
    return run_kernel(d, s, "dl_dev_layernorm_forward", a, 6, [&](Emu *e) {
        return dlk::dl_cuda_layernorm_forward(dt, M, C, eps, X(e, x), X(e, gamma), X(e, beta), X(e, y), X(e, mean),
                                              X(e, rstd), nullptr);
    });
}
dl_dev_status emu_layernorm_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t M, int64_t C, const void *x,
                                     const float *gamma, const float *mean, const float *rstd, const void *dy,
                                     void *dx, float *dgamma, float *dbeta)
{
    const size_t nx = nbytes(M * C, dt), ns = (size_t)M * 4;
    Arg a[8] = {{"x", x, nx, false}, {"gamma", dx ? gamma : nullptr, M ? (size_t)C * 4 : 0, false},
                {"mean", mean, ns, false}, {"rstd", rstd, ns, false}, {"dy", dy, nx, false}, {"dx", dx, nx, true},
                {"dgamma", dgamma, (size_t)C * 4, true}, {"dbeta", dbeta, (size_t)C * 4, true}};
    return run_kernel(d, s, "dl_dev_layernorm_backward", a, 8, [&](Emu *e) {
        return dlk::dl_cuda_layernorm_backward(dt, M, C, X(e, x), X(e, gamma), X(e, mean), X(e, rstd), X(e, dy),
                                               X(e, dx), X(e, dgamma), X(e, dbeta), nullptr);
    });
}
dl_dev_status emu_embed_tokens(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t T, int64_t C, int64_t V,
                               const int32_t *ids, const float *tok, const float *pos, void *out)
{
    const char *op = "dl_dev_embed_tokens";
    const int64_t rows = N * T;
    Arg a[4] = {{"ids", ids, (size_t)rows * 4, false}, {"tok", rows ? tok : nullptr, (size_t)(V * C) * 4, false},
                {"pos", rows ? pos : nullptr, (size_t)(T * C) * 4, false}, {"out", out, nbytes(rows * C, dt), true}};
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    dl_dev_status st = check_args(e, S(s), op, a, 4);
    if (st != DL_DEV_SUCCESS) return st;
    /* the real device clamps a bad id; here it is the caller's error, named before anything runs */
    const int32_t *hid = X(e, ids);
    for (int64_t r = 0; r < rows; r++)
        if (hid[r] < 0 || hid[r] >= V)
            return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "%s: token id %d at [n %lld, t %lld] is outside the vocabulary "
                               "[0, %lld)", op, (int)hid[r], (long long)(r / T), (long long)(r % T), (long long)V);
    st = kernel_rc(op, dlk::dl_cuda_embed_tokens(dt, N, T, C, V, hid, X(e, tok), X(e, pos), X(e, out), nullptr));
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, 4);
    return st;
}
dl_dev_status emu_embed_tokens_backward(dl_dev *d, dl_dev_stream *s, int64_t N, int64_t T, int64_t C, int64_t V,
                                        const int32_t *ids, const float *dout, float *dtok, float *dpos)
{
    const char *op = "dl_dev_embed_tokens_backward";
    const int64_t rows = N * T;
    const bool any = rows > 0;
    Arg a[6] = {{"ids", ids, (size_t)rows * 4, false}, {"dout", any ? dout : nullptr, (size_t)(rows * C) * 4, false},
                {"dtok (read)", any ? dtok : nullptr, (size_t)(V * C) * 4, false},
                {"dtok", any ? dtok : nullptr, (size_t)(V * C) * 4, true},
                {"dpos (read)", any ? dpos : nullptr, (size_t)(T * C) * 4, false},
                {"dpos", any ? dpos : nullptr, (size_t)(T * C) * 4, true}};
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    dl_dev_status st = check_args(e, S(s), op, a, 6);
    if (st != DL_DEV_SUCCESS) return st;
    const int32_t *hid = X(e, ids);
    for (int64_t r = 0; r < rows; r++)
        if (hid[r] < 0 || hid[r] >= V)
            return dl_dev_fail(DL_DEV_ERR_BAD_PARAM, "%s: token id %d at [n %lld, t %lld] is outside the vocabulary "
                               "[0, %lld)", op, (int)hid[r], (long long)(r / T), (long long)(r % T), (long long)V);
    st = kernel_rc(op, dlk::dl_cuda_embed_tokens_backward(N, T, C, V, hid, X(e, dout), X(e, dtok), X(e, dpos), nullptr));
    if (st == DL_DEV_SUCCESS) record_writes(e, S(s), op, a, 6);
    return st;
}
dl_dev_status emu_softmax_forward(dl_dev *d, dl_dev_stream *s, int64_t rows, int64_t cols, float scale,
                                  int64_t causal_tq, const float *x, float *y, float *lse)
{
    const size_t nx = (size_t)(rows * cols) * 4;
    Arg a[3] = {{"x", x, nx, false}, {"y", y, nx, true}, {"lse", lse, (size_t)rows * 4, true}};
    return run_kernel(d, s, "dl_dev_softmax_forward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_softmax_forward(rows, cols, scale, causal_tq, X(e, x), X(e, y), X(e, lse), nullptr);
    });
}
dl_dev_status emu_softmax_backward(dl_dev *d, dl_dev_stream *s, int64_t rows, int64_t cols, const float *y, float *dp)
{
    const size_t nx = (size_t)(rows * cols) * 4;
    Arg a[3] = {{"y", y, nx, false}, {"dp (read)", dp, nx, false}, {"dp", dp, nx, true}};
    return run_kernel(d, s, "dl_dev_softmax_backward", a, 3, [&](Emu *e) {
        return dlk::dl_cuda_softmax_backward(rows, cols, X(e, y), X(e, dp), nullptr);
    });
}
dl_dev_status emu_mse_forward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D, const void *pred,
                              const void *target, const float *weights, float *per_sample, float *loss)
{
    const size_t np = nbytes(N * D, dt);
    Arg a[5] = {{"pred", pred, np, false}, {"target", target, np, false}, {"weights", weights, (size_t)N * 4, false},
                {"per_sample", per_sample, (size_t)N * 4, true}, {"loss", loss, 4, true}};
    return run_kernel(d, s, "dl_dev_mse_loss_forward", a, 5, [&](Emu *e) {
        return dlk::dl_cuda_mse_loss_forward(dt, N, D, X(e, pred), X(e, target), X(e, weights), X(e, per_sample),
                                             X(e, loss), nullptr);
    });
}
dl_dev_status emu_mse_backward(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t N, int64_t D, const void *pred,
                               const void *target, const float *weights, float dloss, void *dpred, void *dtarget)
{
    const size_t np = nbytes(N * D, dt);
    const bool any = dpred || dtarget; /* neither: nothing is read */
    Arg a[5] = {{"pred", any ? pred : nullptr, np, false}, {"target", any ? target : nullptr, np, false},
                {"weights", any ? weights : nullptr, (size_t)N * 4, false}, {"dpred", dpred, np, true},
                {"dtarget", dtarget, np, true}};
    return run_kernel(d, s, "dl_dev_mse_loss_backward", a, 5, [&](Emu *e) {
        return dlk::dl_cuda_mse_loss_backward(dt, N, D, X(e, pred), X(e, target), X(e, weights), dloss, X(e, dpred),
                                              X(e, dtarget), nullptr);
    });
}
dl_dev_status emu_adamw_step(dl_dev *d, dl_dev_stream *s, int64_t n, double lr, double beta1, double beta2, double eps,
                             double wd, int64_t step, float *p, const float *g, float *m, float *v)
{
    const size_t nb = (size_t)n * 4;
    Arg a[7] = {{"g", g, nb, false},     {"p (read)", p, nb, false}, {"m (read)", m, nb, false},
                {"v (read)", v, nb, false}, {"p", p, nb, true},         {"m", m, nb, true},
                {"v", v, nb, true}};
    return run_kernel(d, s, "dl_dev_adamw_step", a, 7, [&](Emu *e) {
        return dlk::dl_cuda_adamw_step(n, lr, beta1, beta2, eps, wd, step, X(e, p), X(e, g), X(e, m), X(e, v), nullptr);
    });
}
dl_dev_status emu_sumsq(dl_dev *d, dl_dev_stream *s, int64_t n, const float *x, float *out)
{
    Arg a[2] = {{"x", x, (size_t)n * 4, false}, {"out", out, 4, true}};
    return run_kernel(d, s, "dl_dev_sumsq", a, 2,
                      [&](Emu *e) { return dlk::dl_cuda_sumsq(n, X(e, x), X(e, out), nullptr); });
}
dl_dev_status emu_clip_coef(dl_dev *d, dl_dev_stream *s, const float *sumsq, float max_norm, float *coef)
{
    Arg a[2] = {{"sumsq", sumsq, 4, false}, {"coef", coef, 4, true}};
    return run_kernel(d, s, "dl_dev_clip_coef", a, 2,
                      [&](Emu *e) { return dlk::dl_cuda_clip_coef(X(e, sumsq), max_norm, X(e, coef), nullptr); });
}
dl_dev_status emu_scale_by(dl_dev *d, dl_dev_stream *s, int64_t n, const float *coef, float *x)
{
    const size_t nb = (size_t)n * 4;
    Arg a[3] = {{"coef", n ? coef : nullptr, 4, false}, {"x (read)", x, nb, false}, {"x", x, nb, true}};
    return run_kernel(d, s, "dl_dev_scale_by", a, 3,
                      [&](Emu *e) { return dlk::dl_cuda_scale_by(n, X(e, coef), X(e, x), nullptr); });
}

dl_dev_status emu_to_f32(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, const void *x, float *y)
{
    Arg a[2] = {{"x", x, (size_t)n * 2, false}, {"y", y, (size_t)n * 4, true}};
    return run_kernel(d, s, "dl_dev_to_f32", a, 2,
                      [&](Emu *e) { return dlk::dl_cuda_to_f32(dt, n, X(e, x), X(e, y), nullptr); });
}

dl_dev_status emu_from_f32(dl_dev *d, dl_dev_stream *s, dl_dtype dt, int64_t n, const float *x, void *y)
{
    Arg a[2] = {{"x", x, (size_t)n * 4, false}, {"y", y, (size_t)n * 2, true}};
    return run_kernel(d, s, "dl_dev_from_f32", a, 2,
                      [&](Emu *e) { return dlk::dl_cuda_from_f32(dt, n, X(e, x), X(e, y), nullptr); });
}

const dl_dev_vt kEmuVt = {
    emu_close, emu_name, emu_synchronize, emu_malloc, emu_free, emu_memcpy, emu_memset,
    emu_stream_create, emu_stream_destroy, emu_stream_synchronize, emu_event_create, emu_event_destroy,
    emu_event_record, emu_stream_wait_event, emu_event_synchronize, emu_event_elapsed_ms, emu_gemm,
    emu_conv_algo, emu_conv, emu_sdpa_forward, emu_sdpa_backward, emu_gn_forward, emu_gn_backward,
    emu_lora_forward, emu_lora_backward, emu_lora_merge,
    emu_act_forward, emu_act_backward, emu_geglu_forward, emu_geglu_backward, emu_add, emu_scale, emu_axpy,
    emu_add_bcast_forward, emu_add_bcast_backward, emu_concat_forward, emu_concat_backward, emu_upsample_forward,
    emu_upsample_backward, emu_pad2d, emu_timestep_embedding, emu_layernorm_forward, emu_layernorm_backward,
    emu_embed_tokens, emu_embed_tokens_backward, emu_softmax_forward, emu_softmax_backward, emu_mse_forward, emu_mse_backward, emu_adamw_step,
    emu_sumsq, emu_clip_coef, emu_scale_by, emu_to_f32, emu_from_f32,
};

} // namespace

extern "C" dl_dev *dl_dev_emu_open(void)
{
    Emu *e = new Emu();
    e->head.vt = &kEmuVt;
    e->head.kind = DL_DEV_EMULATED;
    e->fd = memfd_create("danlu-emulated-device", MFD_CLOEXEC);
    if (e->fd < 0 || ftruncate(e->fd, (off_t)kHeap) != 0) {
        if (e->fd >= 0) close(e->fd);
        delete e;
        dl_dev_fail(DL_DEV_ERR_UNAVAILABLE, "dl_dev_open(emulated): memfd_create/ftruncate failed: %s", strerror(errno));
        return nullptr;
    }
    void *dv = mmap(nullptr, kHeap, PROT_NONE, MAP_SHARED | MAP_NORESERVE, e->fd, 0);
    void *sh = mmap(nullptr, kHeap, PROT_NONE, MAP_SHARED | MAP_NORESERVE, e->fd, 0);
    if (dv == MAP_FAILED || sh == MAP_FAILED) {
        if (dv != MAP_FAILED) munmap(dv, kHeap);
        if (sh != MAP_FAILED) munmap(sh, kHeap);
        close(e->fd);
        delete e;
        dl_dev_fail(DL_DEV_ERR_UNAVAILABLE, "dl_dev_open(emulated): cannot map %zu GiB of address space", kHeap >> 30);
        return nullptr;
    }
    e->dev = (unsigned char *)dv;
    e->shadow = (unsigned char *)sh;
    e->free_list[0] = kHeap;
    const char *sm = getenv("DANLU_EMU_SM"); /* the compute capability it claims (dl_dev_sm) */
    e->head.sm = sm && *sm ? atoi(sm) : 75;
    const char *lim = getenv("DANLU_EMU_MEMORY_MIB");
    if (lim && *lim) e->limit = (size_t)strtoull(lim, nullptr, 10) << 20;
    register_heap(e);
    return &e->head;
}

extern "C" dl_dev_status dl_dev_emu_mem_info(dl_dev *d, size_t *free_bytes, size_t *total_bytes)
{
    Emu *e = E(d);
    std::lock_guard<std::mutex> lk(e->mu);
    if (!e->limit)
        return dl_dev_fail(DL_DEV_ERR_NOT_SUPPORTED, "dl_dev_mem_info: the emulated device has no fixed memory size "
                           "(set DANLU_EMU_MEMORY_MIB)");
    *total_bytes = e->limit;
    *free_bytes = e->limit - e->in_use;
    return DL_DEV_SUCCESS;
}

extern "C" size_t dl_dev_groupnorm_workspace_size(int N, int64_t HW, int C, int G)
{
    return dlk::dl_cuda_groupnorm_workspace_size(N, HW, C, G);
}
extern "C" size_t dl_dev_lora_workspace_size(int64_t M, int in, int out, int rank)
{
    return dlk::dl_cuda_lora_workspace_size(M, in, out, rank);
}
