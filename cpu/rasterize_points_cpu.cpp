// The CPU backend: a thin driver that maps the shared per-Gaussian and
// per-pixel math (cuda_rasterizer/*.h) onto loops over Gaussians and tiles,
// parallelised with ATen's thread pool (so torch.set_num_threads applies).
//
// Every result is independent of the thread count: pixels are computed by
// one thread each, per-Gaussian gradients are first written per (Gaussian,
// tile) entry by the tile that owns it and then summed in a fixed order.

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <type_traits>
#include <utility>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../cuda_rasterizer/preprocess.h"
#include "../rasterize_checks.h"
#include "../rasterize_points.h"

namespace {
torch::Tensor pooled_empty(at::IntArrayRef sizes, torch::ScalarType dtype);  // below
}

// Exclusive prefix sum of the per-Gaussian entry counts, in int64 (the
// total exceeds 2^31 long before any single count does): the first slot of
// each Gaussian, and the number of (Gaussian, tile) entries at the end.
torch::Tensor entry_offsets_cpu(const torch::Tensor& tiles_touched) {
    TORCH_CHECK(tiles_touched.defined() && tiles_touched.is_cpu() && tiles_touched.dim() == 1 &&
                    tiles_touched.scalar_type() == torch::kInt32 && tiles_touched.is_contiguous(),
                "entry_offsets: tiles_touched: expected a contiguous int32 CPU tensor of shape [P], got ",
                tiles_touched.defined() ? tiles_touched.toString() + " of shape " + c10::str(tiles_touched.sizes())
                                        : std::string("an undefined tensor"));
    const int64_t P = tiles_touched.size(0);
    const int* touched = tiles_touched.data_ptr<int>();
    torch::Tensor result = pooled_empty({P + 1}, torch::kInt64);
    int64_t* offsets = result.data_ptr<int64_t>();
    // in parallel parts (one thread took ~0.6 ms on a million Gaussians):
    // each part's total, then each part's running sum from the totals before it
    constexpr int64_t PART = 1 << 16;
    const int64_t parts = (P + PART - 1) / PART;
    std::vector<int64_t> start(size_t(parts) + 1, 0);
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p)
            start[size_t(p) + 1] = std::accumulate(touched + p * PART, touched + std::min(P, (p + 1) * PART), int64_t(0));
    });
    std::partial_sum(start.begin(), start.end(), start.begin());
    offsets[0] = 0;
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
            int64_t sum = start[size_t(p)];
            const int64_t end = std::min(P, (p + 1) * PART);
            for (int64_t i = p * PART; i < end; ++i) offsets[i + 1] = sum += touched[i];
        }
    });
    return result;
}

namespace {

using dgr::TILE_X;
using dgr::TILE_Y;

// Runs f(i) for i in [0, n) on ATen's threads, handing out indices one at a
// time so that expensive tiles do not leave other threads idle.
template <typename F>
void parallel_for_dynamic(int64_t n, const F& f) {
    if (n <= 0) return;
    std::atomic<int64_t> next{0};
    const int64_t workers = std::min<int64_t>(at::get_num_threads(), n);
    at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
        for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) f(i);
    });
}

// Runs f(begin, end) over [0, n) in chunks of `chunk`, handed out one at a
// time (parallel_for_dynamic over chunks): for loops whose cost per index
// varies along the range (the preprocess: culled Gaussians cost little, and
// scenes are often stored with the visible ones bunched together).
template <typename F>
void parallel_for_chunks(int64_t n, int64_t chunk, const F& f) {
    parallel_for_dynamic((n + chunk - 1) / chunk,
                         [&](int64_t c) { f(c * chunk, std::min(n, (c + 1) * chunk)); });
}

// Memory for the per-entry buffers (statistics, gradients: tens to hundreds
// of MiB on large scenes) and for every tensor the forward and backward
// return (pooled_empty), kept between calls. Fresh
// memory costs a page fault per 4 KiB on first touch, and glibc hands
// buffers this large back to the kernel when they are freed, so every render
// paid those faults again: ~30 ms of the dense scene's 150-180 ms statistics
// forward (benchmarks/RESULTS.md). The pool keeps a few freed blocks, up to
// kMaxCachedBytes in all, for the next call; release_scratch() frees them.
class ScratchPool {
public:
    static ScratchPool& instance() {
        static ScratchPool* pool = new ScratchPool;  // never destroyed: pooled tensors may outlive main()
        return *pool;
    }
    // A block of at least `bytes`; `capacity` gets its true size.
    void* take(size_t bytes, size_t& capacity) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            // the smallest cached block that fits without wasting half of it
            size_t best = blocks_.size();
            for (size_t i = 0; i < blocks_.size(); ++i)
                if (blocks_[i].bytes >= bytes && blocks_[i].bytes / 2 <= bytes &&
                    (best == blocks_.size() || blocks_[i].bytes < blocks_[best].bytes))
                    best = i;
            if (best != blocks_.size()) {
                const Block b = blocks_[best];
                blocks_.erase(blocks_.begin() + std::ptrdiff_t(best));
                cached_ -= b.bytes;
                capacity = b.bytes;
                return b.ptr;
            }
        }
        return fresh_block(bytes, capacity);
    }
    void give(void* ptr, size_t bytes) {
        if (ptr == nullptr) return;
        std::vector<void*> evicted;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (bytes > kMaxCachedBytes) {
                evicted.push_back(ptr);
            } else {
                blocks_.push_back(Block{ptr, bytes});
                cached_ += bytes;
                while (cached_ > kMaxCachedBytes || blocks_.size() > kMaxBlocks) {  // oldest first
                    evicted.push_back(blocks_.front().ptr);
                    cached_ -= blocks_.front().bytes;
                    blocks_.erase(blocks_.begin());
                }
            }
        }
        for (void* p : evicted) std::free(p);
    }
    void release() {
        std::vector<Block> blocks;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            blocks.swap(blocks_);
            cached_ = 0;
        }
        for (const Block& b : blocks) std::free(b.ptr);
    }

private:
    // Blocks of 2 MiB and more are aligned to 2 MiB and asked for huge pages
    // (the kernel's default here is 4 KiB pages unless madvise'd): the tiles
    // read the splat records at scattered Gaussians, and garden-x3's 64 MiB
    // of them span 16,384 small pages, far more than the TLB holds
    // (forward 54.5 -> 52.8 ms, garden 28.0 -> 27.1 ms, once the records
    // were prefetched; without that prefetch, no change).
    static void* fresh_block(size_t bytes, size_t& capacity) {
        constexpr size_t kHugePage = size_t(2) << 20;
        capacity = (bytes + 63) / 64 * 64;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
        if (capacity >= kHugePage) {
            // (not rounded up to whole huge pages: its last part, less than
            // one, stays in small pages rather than adding up to 2 MiB a block)
            void* block = nullptr;
            if (posix_memalign(&block, kHugePage, capacity) != 0) return nullptr;
            madvise(block, capacity / kHugePage * kHugePage, MADV_HUGEPAGE);  // (advice only: its failure changes nothing)
            return block;
        }
#endif
        return std::aligned_alloc(64, capacity);
    }
    static constexpr size_t kMaxCachedBytes = size_t(1) << 30;
    static constexpr size_t kMaxBlocks = 64;  // a forward with statistics and its backward use ~45
    struct Block {
        void* ptr;
        size_t bytes;
    };
    std::mutex mutex_;
    std::vector<Block> blocks_;
    size_t cached_ = 0;
};

// An array of n T's from the ScratchPool, returned to it when destroyed;
// zeroed (in parallel) if asked.
template <typename T>
class ScratchArray {
    static_assert(std::is_trivially_copyable<T>::value, "zero bytes must be a valid T");

public:
    ScratchArray() = default;
    ScratchArray(int64_t n, const char* what, bool zeroed) {
        const size_t bytes = std::max<size_t>(size_t(n) * sizeof(T), 1);
        data_ = static_cast<T*>(ScratchPool::instance().take(bytes, capacity_));
        TORCH_CHECK(data_ != nullptr, what, ": out of memory for ", n, " entries (", bytes, " bytes)");
        if (zeroed) {
            char* p = reinterpret_cast<char*>(data_);
            at::parallel_for(0, int64_t(bytes), int64_t(1) << 20,
                             [&](int64_t begin, int64_t end) { std::memset(p + begin, 0, size_t(end - begin)); });
        }
    }
    ScratchArray(const ScratchArray&) = delete;
    ScratchArray& operator=(const ScratchArray&) = delete;
    ScratchArray(ScratchArray&& o) noexcept { swap(o); }
    ScratchArray& operator=(ScratchArray&& o) noexcept {
        swap(o);
        return *this;
    }
    ~ScratchArray() { ScratchPool::instance().give(data_, capacity_); }
    T* get() const { return data_; }
    T& operator[](int64_t i) const { return data_[i]; }

private:
    void swap(ScratchArray& o) {
        std::swap(data_, o.data_);
        std::swap(capacity_, o.capacity_);
    }
    T* data_ = nullptr;
    size_t capacity_ = 0;
};

// Tensors whose memory comes from the ScratchPool and goes back to it when
// the last reference to it goes: the forward's outputs and state and the
// backward's gradients, which a training loop frees and asks for again every
// iteration. Fresh pages would fault (a million Gaussians' gradients are
// ~100 MiB: ~13,000 faults, ~5% of the backward). They are ordinary tensors
// otherwise: the storage keeps this allocator, so resizing one takes a new
// block from the pool. Each block starts with a header holding its capacity
// (the deleter is handed the data pointer only).
class PoolAllocator final : public c10::Allocator {
public:
    static PoolAllocator& instance() {
        static PoolAllocator* allocator = new PoolAllocator;  // never destroyed, like the pool
        return *allocator;
    }
    c10::DataPtr allocate(size_t n) override {
        size_t capacity = 0;
        char* base = static_cast<char*>(ScratchPool::instance().take(n + kHeader, capacity));
        TORCH_CHECK(base != nullptr, "diff_gaussian_rasterization_ks (CPU): out of memory allocating ", n, " bytes");
        std::memcpy(base, &capacity, sizeof(capacity));
        void* data = base + kHeader;
        return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
    }
    c10::DeleterFnPtr raw_deleter() const override { return &release; }
    void copy_data(void* dest, const void* src, std::size_t count) const override {
        default_copy_data(dest, src, count);
    }

private:
    static constexpr size_t kHeader = 64;  // (keeps the data 64-byte aligned)
    static void release(void* data) {
        if (data == nullptr) return;
        char* base = static_cast<char*>(data) - kHeader;
        size_t capacity;
        std::memcpy(&capacity, base, sizeof(capacity));
        ScratchPool::instance().give(base, capacity);
    }
};

// An uninitialised CPU tensor from the PoolAllocator.
torch::Tensor pooled_empty(at::IntArrayRef sizes, torch::ScalarType dtype) {
    return at::detail::empty_generic(sizes, &PoolAllocator::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     dtype, std::nullopt);
}

// Wall time of the phases of the calling thread's last forward and backward
// (cpu_phase_times, for benchmarks/bench.py --phases: where the 2-thread time
// goes). One clock read per phase, a few per call.
using PhaseTimes = std::vector<std::pair<std::string, double>>;
thread_local PhaseTimes forward_phases, backward_phases;
class PhaseClock {
public:
    explicit PhaseClock(PhaseTimes& out) : out_(out), last_(std::chrono::steady_clock::now()) { out_.clear(); }
    // The time since the previous mark (or the start) was spent in `phase`.
    void mark(const char* phase) {
        const auto now = std::chrono::steady_clock::now();
        out_.emplace_back(phase, std::chrono::duration<double, std::milli>(now - last_).count());
        last_ = now;
    }

private:
    PhaseTimes& out_;
    std::chrono::steady_clock::time_point last_;
};

dgr::Camera make_camera(const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, const torch::Tensor& campos,
                        double tan_fovx, double tan_fovy, int64_t height, int64_t width) {
    dgr::Camera cam;
    cam.viewmatrix = viewmatrix.data_ptr<float>();
    cam.projmatrix = projmatrix.data_ptr<float>();
    const float* c = campos.data_ptr<float>();
    cam.campos = glm::vec3(c[0], c[1], c[2]);
    cam.width = int(width);
    cam.height = int(height);
    cam.tan_fovx = float(tan_fovx);
    cam.tan_fovy = float(tan_fovy);
    cam.focal_x = dgr::focal_length(width, tan_fovx);
    cam.focal_y = dgr::focal_length(height, tan_fovy);
    return cam;
}

struct TileGrid {
    int grid_x, grid_y;
    int64_t num_tiles() const { return int64_t(grid_x) * grid_y; }
};

TileGrid make_grid(int64_t height, int64_t width) {
    return TileGrid{int((width + TILE_X - 1) / TILE_X), int((height + TILE_Y - 1) / TILE_Y)};
}

// Everything the tile loops read of one drawn splat (load_splat's values,
// in TileSplats' field order), in one cache line: the tiles gather their
// splats in depth order, i.e. at random Gaussians, one line per entry
// instead of one in each of five arrays (garden-x3 forward 70 -> 67 ms;
// written in the preprocess, not in a pass of its own, which cost what it
// saved: benchmarks/RESULTS.md). The same line holds what the tile loops
// need for an entry's slot (entry_slot): the splat's tile rectangle and its
// first slot less that of its chunk of VisibleRuns::CHUNK Gaussians (the
// chunk's is gaussian_offsets at the chunk's start).
constexpr int SPLAT_FIELDS = 6 + dgr::NUM_FEATURES;
struct alignas(64) SplatRecord {
    float field[SPLAT_FIELDS];
    dgr::TileRect rect;
    uint32_t chunk_slot;
};
static_assert(sizeof(SplatRecord) == 64, "one cache line per splat");

// A stable counting sort (one digit of the depth sort) in `chunks`
// consecutive parts of items [0, n), one part per task on the threads:
// bucket_of(i) is item i's bucket, and place(i) returns what is then called
// with item i's position (a callable made per item, so that what it writes
// cannot alias what it read). Each part counts its buckets, the cursors run
// bucket by bucket and part by part, and each part places its items from its
// own cursors: the order within a bucket is the items' order for any number
// of parts. Returns where each bucket starts (and, last, n).
template <typename BucketOf, typename Place>
std::vector<int64_t> counting_sort_in_chunks(int64_t n, int64_t chunks, int64_t buckets, const BucketOf& bucket_of,
                             const Place& place) {
    std::vector<int64_t> cursor(size_t(chunks * buckets), 0);
    // (the loops take their bounds in locals: computed in the loop condition,
    // the division was redone per item, its operands reloaded after every
    // int64 store that might alias them: the passes ran 2x slower)
    auto part = [n, chunks](int64_t c) { return n * c / chunks; };
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            int64_t* count = cursor.data() + c * buckets;
            const int64_t begin = part(c), end = part(c + 1);
            for (int64_t i = begin; i < end; ++i) ++count[bucket_of(i)];
        }
    });
    std::vector<int64_t> starts(size_t(buckets) + 1);
    int64_t total = 0;
    for (int64_t d = 0; d < buckets; ++d) {
        starts[size_t(d)] = total;
        for (int64_t c = 0; c < chunks; ++c) {
            const int64_t k = cursor[size_t(c * buckets + d)];
            cursor[size_t(c * buckets + d)] = total;
            total += k;
        }
    }
    starts[size_t(buckets)] = total;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            int64_t* next = cursor.data() + c * buckets;
            const int64_t begin = part(c), end = part(c + 1);
            for (int64_t i = begin; i < end; ++i) {
                auto put = place(i);
                put(next[bucket_of(i)]++);
            }
        }
    });
    return starts;
}

// Binning: one entry per (Gaussian, touched tile), ordered by tile and then
// by depth (ties by Gaussian index: a stable order). Each entry also has a
// slot (entry_slot, below), so that per-entry results stored at their slots
// (the statistics, the backward's gradients) lie in a row per Gaussian.
struct Binning {
    torch::Tensor gaussian_offsets;  // [P+1] int64: first slot of each Gaussian
    torch::Tensor tile_ranges;       // [tiles+1] int64: first entry of each tile
    torch::Tensor point_list;        // [E] int32: Gaussian of each sorted entry
};

// The depth-sort items (depth bits << 32 | index) of the visible Gaussians
// (tiles_touched > 0) of each chunk of CHUNK Gaussians, compacted where the
// chunk starts, with their count and key range (the statistics' sum reads
// them too, as the list of Gaussians with entries): added by the
// preprocess as it finds them (a pass of its own over a million Gaussians
// read 8 MB: ~1 ms of garden-x3; one over each chunk after its preprocess,
// ~0.6 ms). Adding one also fills its SplatRecord's binning fields.
struct VisibleRuns {
    static constexpr int64_t CHUNK = 4096;
    ScratchArray<uint64_t> items;  // [P]
    std::vector<int64_t> found;    // per chunk
    std::vector<uint32_t> key_min, key_max;
    explicit VisibleRuns(int64_t P)
        : items(P, "rasterize_forward_cpu: depth order", false),
          found(size_t((P + CHUNK - 1) / CHUNK)),
          key_min(found.size()),
          key_max(found.size()) {}
    int64_t chunks() const { return int64_t(found.size()); }
    // The Gaussian of an item (its low 32 bits: see Run::add).
    static int32_t gaussian_of(uint64_t item) { return int32_t(uint32_t(item)); }

    // The run of the chunk of Gaussians [begin, ...): add() each visible
    // one in order, then close().
    class Run {
    public:
        Run(VisibleRuns& runs, int64_t begin) : runs_(runs), chunk_(size_t(begin / CHUNK)), out_(runs.items.get() + begin) {
            TORCH_INTERNAL_ASSERT(begin % CHUNK == 0, "VisibleRuns: not a chunk");
        }
        // (Gaussians in index order: the record's chunk_slot counts the
        // entries of those added before it)
        void add(int64_t i, float depth, const dgr::TileRect& rect, SplatRecord& record) {
            uint32_t key;
            std::memcpy(&key, &depth, sizeof(key));
            out_[n_++] = uint64_t(key) << 32 | uint64_t(i);
            k_min_ = std::min(k_min_, key);
            k_max_ = std::max(k_max_, key);
            record.rect = rect;
            record.chunk_slot = uint32_t(entries_);  // (exact: see close())
            entries_ += uint64_t(rect.area());
        }
        void close() {
            TORCH_INTERNAL_ASSERT(n_ <= CHUNK, "VisibleRuns: more than a chunk");
            // (a chunk's first slots fit 32 bits unless the image has over
            // 2^32 / CHUNK = 2^20 tiles, each Gaussian covering most of them)
            TORCH_CHECK(entries_ <= uint64_t(UINT32_MAX), "rasterize_forward_cpu: more than 2^32 (Gaussian, tile) "
                        "entries among ", CHUNK, " consecutive Gaussians: ", entries_);
            runs_.found[chunk_] = n_;
            runs_.key_min[chunk_] = k_min_;
            runs_.key_max[chunk_] = k_max_;
        }

    private:
        VisibleRuns& runs_;
        size_t chunk_;
        uint64_t* out_;
        int64_t n_ = 0;
        uint32_t k_min_ = ~0u, k_max_ = 0u;
        uint64_t entries_ = 0;
    };
};

// The slot of drawn Gaussian g's entry in tile (tx, ty): its k-th tile in
// row-major order of its rectangle has slot gaussian_offsets[g] + k, which
// is its chunk's first slot plus its record's chunk_slot. (Computed where
// it is needed from the record the tile loops read anyway: a stored slot
// per entry, 8 bytes written by the binning and read back, took a sixth of
// garden-x3's binning and its check a sixth of its backward.)
inline int64_t entry_slot(const SplatRecord& r, const int64_t* gaussian_offsets, int64_t g, int64_t tx, int64_t ty) {
    const dgr::TileRect& q = r.rect;
    return gaussian_offsets[g - g % VisibleRuns::CHUNK] + int64_t(r.chunk_slot) + (ty - q.min_y) * (q.max_x - q.min_x) +
           (tx - q.min_x);
}

// Sorts the items [0, m) of one bucket of the depth sort (all with the same
// top digit) by the low `bits` bits of their keys less `lo`, stably, with
// scratch[0, m), and writes their Gaussians in that order to out[0, m): LSD
// passes of at most 11 bits, or an insertion sort of the whole items (key,
// then index: the stable order) when there are too few items to pay for the
// counts. The counts of every pass come from one read of the items, a pass
// whose digit is the same for all items is skipped, and the last pass writes
// the Gaussians straight to `out`. (Passes of at most 8 bits, each counting
// for itself, then a copy to `out`: 3 passes and 7 reads for garden-x3's 17
// bits, and its buckets took 2.1-2.5 of its 11.5-14 ms binning.)
void sort_depth_bucket(uint64_t* items, uint64_t* scratch, int64_t m, uint32_t lo, int bits, int32_t* out) {
    auto write_out = [m, out](const uint64_t* from) {
        for (int64_t i = 0; i < m; ++i) out[i] = VisibleRuns::gaussian_of(from[i]);
    };
    if (m <= 16) {
        for (int64_t i = 1; i < m; ++i) {
            const uint64_t item = items[i];
            int64_t j = i;
            for (; j > 0 && items[j - 1] > item; --j) items[j] = items[j - 1];
            items[j] = item;
        }
        write_out(items);
        return;
    }
    constexpr int MAX_PASSES = 3, MAX_DIGIT_BITS = 11;  // (32 bits at most)
    const int passes = (bits + MAX_DIGIT_BITS - 1) / MAX_DIGIT_BITS;
    const int digit_bits = passes == 0 ? 0 : (bits + passes - 1) / passes;
    const uint32_t mask = (1u << digit_bits) - 1;
    auto key_of = [lo](uint64_t item) { return uint32_t(item >> 32) - lo; };
    uint32_t next[MAX_PASSES][1u << MAX_DIGIT_BITS];
    for (int pass = 0; pass < passes; ++pass) std::fill_n(next[pass], mask + 1, 0u);
    for (int64_t i = 0; i < m; ++i) {
        const uint32_t key = key_of(items[i]);
        for (int pass = 0; pass < passes; ++pass) ++next[pass][(key >> (pass * digit_bits)) & mask];
    }
    bool moves[MAX_PASSES];  // (false: every item has the same digit)
    int last = -1;           // the last pass that moves anything
    for (int pass = 0; pass < passes; ++pass) {
        moves[pass] = next[pass][(key_of(items[0]) >> (pass * digit_bits)) & mask] != uint32_t(m);
        if (moves[pass]) last = pass;
    }
    for (int pass = 0; pass <= last; ++pass) {
        if (!moves[pass]) continue;
        uint32_t* cursor = next[pass];
        uint32_t total = 0;
        for (uint32_t d = 0; d <= mask; ++d) total += std::exchange(cursor[d], total);
        const int shift = pass * digit_bits;
        if (pass == last) {
            for (int64_t i = 0; i < m; ++i)
                out[cursor[(key_of(items[i]) >> shift) & mask]++] = VisibleRuns::gaussian_of(items[i]);
            return;
        }
        for (int64_t i = 0; i < m; ++i) scratch[cursor[(key_of(items[i]) >> shift) & mask]++] = items[i];
        std::swap(items, scratch);
    }
    write_out(items);  // (every item had the same key: already in index order)
}

// The visible Gaussians in order of depth, ties by index, sorted from the
// runs' items (positive floats order like their bit patterns; the preprocess
// culls z <= 0.2 and NaN) on the bits the keys' range needs (~25 of 32: the
// keys less the smallest). Two stages, so that each thread writes to memory
// of its own:
// - a stable counting sort by the top digit (at most 11 bits; 1,024 to
//   2,047 items a bucket on average, 8-16 KB), in parts
//   (counting_sort_in_chunks);
// - each bucket sorted by the rest of the bits in L1 (sort_depth_bucket),
//   the buckets handed out to the threads.
// (Before, an LSD sort of all the items in two passes of 8,192 buckets had
// the threads writing beside each other in every bucket: on garden it took
// as long on 2 threads as on 1. Buckets of ~128 items took longer than
// ~1,000 on garden-x3: a wider top digit, more places written at once.
// benchmarks/RESULTS.md, sixteenth session.)
ScratchArray<int32_t> depth_order(const VisibleRuns& runs, int64_t& V) {
    std::vector<int64_t> base(size_t(runs.chunks()) + 1, 0);
    uint32_t lo = ~0u, hi = 0u;
    for (int64_t r = 0; r < runs.chunks(); ++r) {
        base[size_t(r) + 1] = base[size_t(r)] + runs.found[size_t(r)];
        if (runs.found[size_t(r)] == 0) continue;
        lo = std::min(lo, runs.key_min[size_t(r)]);
        hi = std::max(hi, runs.key_max[size_t(r)]);
    }
    const int64_t n = base[size_t(runs.chunks())];
    V = n;
    ScratchArray<uint64_t> items(n, "bin_gaussians: depth order", false), other(n, "bin_gaussians: depth order", false);
    uint64_t* a = items.get();
    uint64_t* b = other.get();
    at::parallel_for(0, runs.chunks(), 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
            std::copy_n(runs.items.get() + r * VisibleRuns::CHUNK, runs.found[size_t(r)], a + base[size_t(r)]);
    });

    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n / 16384));
    const uint32_t range = n == 0 ? 0u : hi - lo;
    const int bits = range == 0 ? 0 : 32 - __builtin_clz(range);
    int top_bits = 0;
    while (top_bits < std::min(bits, 11) && (n >> (top_bits + 1)) >= 1024) ++top_bits;
    const int low_bits = bits - top_bits;
    const std::vector<int64_t> starts = counting_sort_in_chunks(
        n, chunks, int64_t(1) << top_bits, [&](int64_t i) { return uint64_t(uint32_t(a[i] >> 32) - lo) >> low_bits; },
        [&](int64_t i) { return [item = a[i], b](int64_t to) { b[to] = item; }; });
    ScratchArray<int32_t> order(n, "bin_gaussians: depth order", false);
    parallel_for_chunks(int64_t(starts.size()) - 1, 16, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
            const int64_t first = starts[size_t(k)];
            sort_depth_bucket(b + first, a + first, starts[size_t(k) + 1] - first, lo, low_bits, order.get() + first);
        }
    });
    return order;
}

// One Gaussian's tiles on one tile row: [x_begin, x_end).
struct RowSpan {
    int32_t g;
    int32_t x_begin, x_end;
};

Binning bin_gaussians(const VisibleRuns& runs, const torch::Tensor& tile_rects, const torch::Tensor& tiles_touched,
                      const TileGrid& grid) {
    const int64_t P = tiles_touched.size(0);
    const int* rects = tile_rects.data_ptr<int>();

    Binning b;
    b.gaussian_offsets = entry_offsets_cpu(tiles_touched);
    const int64_t* offsets = b.gaussian_offsets.data_ptr<int64_t>();
    const int64_t num_entries = offsets[P];

    int64_t V = 0;
    const ScratchArray<int32_t> order = depth_order(runs, V);

    // The entries: the depth-ordered Gaussians dealt to their tiles (within a
    // tile, entries come in depth order).
    // The rectangles in depth order, gathered once (in parallel), so that
    // the passes below read them in a row rather than at random Gaussians:
    // on a million Gaussians those scattered reads made the binning
    // cache-miss bound. (From tile_rects, 16 bytes a Gaussian: from the
    // 64-byte SplatRecords the binning took 10-25% longer.)
    ScratchArray<dgr::TileRect> sorted_rect(V, "bin_gaussians: rectangles", false);
    at::parallel_for(0, V, 16384, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t g = order[i];
            sorted_rect[i] = dgr::TileRect{rects[4 * g], rects[4 * g + 1], rects[4 * g + 2], rects[4 * g + 3]};
        }
    });
    const int64_t num_tiles = grid.num_tiles();
    const int64_t grid_x = grid.grid_x, grid_y = grid.grid_y;
    b.tile_ranges = pooled_empty({num_tiles + 1}, torch::kInt64);
    b.point_list = pooled_empty({num_entries}, torch::kInt32);
    int32_t* points = b.point_list.data_ptr<int32_t>();
    int64_t* ranges = b.tile_ranges.data_ptr<int64_t>();

    // In two stable passes, each writing to few lists at a time (one pass
    // straight into every tile's list wrote to thousands: garden-2x's 4,428
    // tiles took 10.7 ms for 1.5 M entries, 2.5 ms for garden's 0.57 M):
    // first each Gaussian's span on each tile row it covers goes to that
    // row's list, in depth order; then each row deals its spans' entries to
    // its tiles.
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(2 * at::get_num_threads(), V / 4096));
    auto part = [V, chunks](int64_t c) { return V * c / chunks; };
    // Counts by difference arrays, a constant number of updates per
    // Gaussian (loops over its rows and tiles mispredicted): per part, the
    // rows' span counts, and the tiles' entry counts in two dimensions.
    const int64_t row_len = grid_y + 1, tile_len = (grid_y + 1) * (grid_x + 1);
    std::vector<int64_t> row_diff(size_t(chunks * row_len), 0), tile_diff(size_t(chunks * tile_len), 0);
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            int64_t* rows = row_diff.data() + c * row_len;
            int64_t* tiles = tile_diff.data() + c * tile_len;
            const int64_t begin = part(c), end = part(c + 1);
            for (int64_t i = begin; i < end; ++i) {
                const dgr::TileRect r = sorted_rect[i];
                rows[r.min_y] += 1;
                rows[r.max_y] -= 1;
                tiles[r.min_y * (grid_x + 1) + r.min_x] += 1;
                tiles[r.min_y * (grid_x + 1) + r.max_x] -= 1;
                tiles[r.max_y * (grid_x + 1) + r.min_x] -= 1;
                tiles[r.max_y * (grid_x + 1) + r.max_x] += 1;
            }
        }
    });
    // Span cursors: row by row, part by part (the parts in depth order).
    std::vector<int64_t> row_starts(size_t(grid_y + 1));
    std::vector<int64_t> span_next(size_t(chunks * grid_y));
    int64_t num_spans = 0;
    {
        std::vector<int64_t> spans_in_row(size_t(chunks), 0);  // running sums of the parts' row differences
        for (int64_t row = 0; row < grid_y; ++row) {
            row_starts[size_t(row)] = num_spans;
            for (int64_t c = 0; c < chunks; ++c) {
                spans_in_row[size_t(c)] += row_diff[size_t(c * row_len + row)];
                span_next[size_t(c * grid_y + row)] = num_spans;
                num_spans += spans_in_row[size_t(c)];
            }
        }
        row_starts[size_t(grid_y)] = num_spans;
    }
    // Tile counts: the parts' differences summed, then summed up in x and
    // in y; then every tile's first entry, in tile order.
    {
        std::vector<int64_t> column(size_t(grid_x + 1), 0);  // running sums in y of the x-summed differences
        int64_t total = 0;
        for (int64_t row = 0; row < grid_y; ++row) {
            int64_t along_x = 0;
            for (int64_t tx = 0; tx < grid_x; ++tx) {
                int64_t d = 0;
                for (int64_t c = 0; c < chunks; ++c) d += tile_diff[size_t(c * tile_len + row * (grid_x + 1) + tx)];
                along_x += d;
                column[size_t(tx)] += along_x;
                ranges[row * grid_x + tx] = total;
                total += column[size_t(tx)];
            }
        }
        ranges[num_tiles] = total;
        TORCH_CHECK(total == num_entries, "bin_gaussians: ", total, " entries binned, ", num_entries, " counted");
    }
    ScratchArray<RowSpan> spans(num_spans, "bin_gaussians: row spans", false);
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
            int64_t* next = span_next.data() + c * grid_y;
            RowSpan* to = spans.get();
            const int64_t begin = part(c), end = part(c + 1);
            for (int64_t i = begin; i < end; ++i) {
                const dgr::TileRect r = sorted_rect[i];
                const RowSpan span{order[i], r.min_x, r.max_x};
                for (int ty = r.min_y; ty < r.max_y; ++ty) to[next[ty]++] = span;
            }
        }
    });
    // (each row's entries are dealt into buffers that stay in cache, then
    // copied out in a row: dealt straight into the lists, whose lines were
    // not in cache, every store that began a line waited for memory)
    parallel_for_dynamic(grid_y, [&](int64_t row) {
        // (kept by each thread: fresh buffers of this size fault in every call)
        static thread_local std::vector<int32_t> row_points;
        static thread_local std::vector<int64_t> next;
        const int64_t first = ranges[row * grid_x], n = ranges[(row + 1) * grid_x] - first;
        if (int64_t(row_points.size()) < n) row_points.resize(size_t(n));
        if (int64_t(next.size()) < grid_x) next.resize(size_t(grid_x));
        for (int64_t tx = 0; tx < grid_x; ++tx) next[size_t(tx)] = ranges[row * grid_x + tx] - first;
        int32_t* to_point = row_points.data();
        int64_t* cursor = next.data();
        for (int64_t k = row_starts[size_t(row)]; k < row_starts[size_t(row + 1)]; ++k) {
            const RowSpan span = spans[k];
            for (int32_t tx = span.x_begin; tx < span.x_end; ++tx) to_point[cursor[tx]++] = span.g;
        }
        std::copy_n(to_point, n, points + first);
    });
    return b;
}

// ---------------------------------------------------------------------------
// The per-pixel loops, vectorised across pixels.
//
// A tile is processed in blocks of BLOCK_W x BLOCK_H pixels, one SIMD lane
// per pixel: for each splat of the block's list (front to back in the
// forward, back to front in the backward) a `#pragma omp simd` loop runs the
// shared per-pixel step (dgr::splat_alpha, PixelAccumulator::blend_if,
// PixelBackward::step) for every pixel of the block, on per-lane state kept
// in structure-of-arrays form; masks stand in for the scalar loop's
// `continue` and `break`, and a block stops when all of its pixels have.
//
// Splats that cannot be blended anywhere in the tile, then anywhere in the
// block, are dropped from the lists first (dgr::splat_may_touch_rect), which
// changes no result: such a splat fails splat_alpha at each of those pixels.
// DGR_CPU_CULL=0 in the environment turns this off (tests compare the two).
// ---------------------------------------------------------------------------

constexpr int BLOCK_W = 8;
constexpr int BLOCK_H = 4;
constexpr int LANES = BLOCK_W * BLOCK_H;
constexpr int BLOCKS_X = TILE_X / BLOCK_W;
constexpr int BLOCKS_Y = TILE_Y / BLOCK_H;
static_assert(TILE_X % BLOCK_W == 0 && TILE_Y % BLOCK_H == 0, "blocks must tile a tile");
static_assert((LANES & (LANES - 1)) == 0, "the lane reductions halve the lanes");
constexpr int NF = dgr::NUM_FEATURES;
constexpr int GRAD_FLOATS = dgr::SPLAT_GRAD_FLOATS;
constexpr int GRAD_LANES = 8;  // partial sums per gradient field and splat in the backward
static_assert(LANES == 4 * GRAD_LANES, "backward_step folds the lanes in two halvings");
// partial sums per statistic and splat in the forward: half the lanes, so
// that one halving folds a row of weights (fold_block_statistics).
constexpr int STAT_LANES = LANES / 2;
static_assert(LANES == 2 * STAT_LANES, "fold_block_statistics folds the lanes in one halving");
// partial maxima and hit counts per splat: half as many again (exact in any
// order, so the extra halving changes no result), so that a splat's partial
// statistics take two cache lines rather than three: the statistics' cost is
// in moving them (zeroed per tile, read and written per block step, read by
// the flush; benchmarks/RESULTS.md, seventeenth session)
constexpr int STAT_EXACT_LANES = STAT_LANES / 2;

// The functions that hold the vectorised loops are compiled for AVX-512,
// AVX2 and baseline x86-64, and the loader picks the best the CPU has (GCC's
// function multiversioning): the extension still runs on any x86-64. The
// helpers they call are force-inlined so that each version gets its own copy.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && \
    (!defined(__clang__) || __clang_major__ >= 14)
#define DGR_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default"), flatten))
#else
#define DGR_MULTIVERSION
#endif
#if defined(__GNUC__)
#define DGR_INLINE inline __attribute__((always_inline))
#define DGR_INLINE_LAMBDA __attribute__((always_inline))
#else
#define DGR_INLINE inline
#define DGR_INLINE_LAMBDA
#endif

bool culling_enabled() {
    const char* v = std::getenv("DGR_CPU_CULL");
    return v == nullptr || std::strcmp(v, "0") != 0;
}

// One splat's partial sums of its statistics over a tile's pixels so far,
// side by side: one address per splat for the fold.
struct alignas(64) SplatStatLanes {
    float accum[STAT_LANES];
    float max[STAT_EXACT_LANES];
    int32_t hits[STAT_EXACT_LANES];
};
static_assert(sizeof(SplatStatLanes) == 128, "two cache lines per splat");

// Inclusive rectangle of pixel coordinates.
struct PixelRect {
    int x0, y0, x1, y1;
    bool empty() const { return x1 < x0 || y1 < y0; }
};

// A tile's splats in structure-of-arrays form, front to back, after culling;
// position[j] is the tile-list position of splat j. One per thread, reused.
struct TileSplats {
    // the fields of a SplatRecord, then those of the splat's RectCullForm
    // that are not in the record (computed when the tile is loaded)
    enum Field { MX, MY, CA, CB, CC, OPACITY, FEATURE0, NUM_FIELDS = FEATURE0 + NF,
                 KX = NUM_FIELDS, KY, Q_SCALE, Q_LIMIT, NUM_STORED };
    int64_t capacity = 0;
    // floats from one field to the next: capacity (a power of two, as it
    // doubles) plus one cache line, so that a splat's fields fall in
    // different sets of the L1 cache (all in one set, the loads of a step
    // evicted each other: ~8 ways for 11 fields)
    int64_t stride = 0;
    int64_t count = 0;
    std::vector<float> data;
    std::vector<float> raw;  // load_tile's scratch: the geometry of every entry, before culling
    std::vector<int32_t> position;
    std::vector<int32_t> flags;
    std::vector<int32_t> list;
    std::vector<int64_t> slots;  // entry slots of the tile's entries (TileSlots)
    // backward: per splat, its gradient summed over the tile's pixels so far,
    // kept as GRAD_LANES partial sums per field (see backward_step)
    std::vector<float> grad_lanes;
    // forward statistics: per splat, partial sums of accum_weight, max_weight
    // and hit_count (SplatStatLanes, see fold_block_statistics), and its
    // top_count; per step of a block, the LANES pixels' blended weights
    std::vector<SplatStatLanes> stat_lanes;
    std::vector<int32_t> top_count;
    std::vector<float> weight_rows;
    // splats [0, stats_reached) of the tile some block stepped over (reset
    // by forward_tile): fold_block_statistics zeroes their sums as its steps
    // reach further, and forward_tile flushes only those. Blocks stop early:
    // on garden-2x, 37% of the tiles' splats were never reached.
    int64_t stats_reached = 0;

    void reserve(int64_t n) {
        if (n <= capacity) return;
        capacity = std::max<int64_t>(n, 2 * capacity);
        capacity = (capacity + 15) / 16 * 16;
        stride = capacity + 16;
        data.assign(size_t(NUM_STORED * stride), 0.f);
        raw.assign(size_t(FEATURE0 * stride), 0.f);
        position.assign(size_t(capacity), 0);
        flags.assign(size_t(capacity), 0);
        list.assign(size_t(capacity), 0);
        slots.assign(size_t(capacity), 0);
        grad_lanes.assign(size_t(capacity * GRAD_FLOATS * GRAD_LANES), 0.f);
        stat_lanes.assign(size_t(capacity), SplatStatLanes{});
        top_count.assign(size_t(capacity), 0);
        weight_rows.assign(size_t(capacity * LANES), 0.f);
    }
    float* field(int f) { return data.data() + f * stride; }
    float* raw_field(int f) { return raw.data() + f * stride; }
    const float* field(int f) const { return data.data() + f * stride; }

    DGR_INLINE dgr::Splat splat(int64_t j) const { return splat_from(data.data(), j); }
    DGR_INLINE dgr::Splat splat_from(const float* fields, int64_t j) const {
        dgr::Splat s;
        s.mean = glm::vec2(fields[MX * stride + j], fields[MY * stride + j]);
        s.conic_opacity = glm::vec4(fields[CA * stride + j], fields[CB * stride + j], fields[CC * stride + j],
                                    fields[OPACITY * stride + j]);
        return s;
    }
    DGR_INLINE dgr::RectCullForm cull_form(int64_t j) const {
        const float* fields = data.data();
        dgr::RectCullForm f;
        f.A = fields[CA * stride + j];
        f.B = fields[CB * stride + j];
        f.C = fields[CC * stride + j];
        f.kx = fields[KX * stride + j];
        f.ky = fields[KY * stride + j];
        f.q_scale = fields[Q_SCALE * stride + j];
        f.q_limit = fields[Q_LIMIT * stride + j];
        return f;
    }
    DGR_INLINE dgr::SplatFeatures features(int64_t j) const {
        dgr::SplatFeatures f;
        for (int k = 0; k < NF; ++k) f.v[k] = field(FEATURE0 + k)[j];
        return f;
    }
};

static_assert(TileSplats::NUM_FIELDS == SPLAT_FIELDS, "a SplatRecord holds the splat fields of TileSplats");

TileSplats& thread_scratch() {
    static thread_local TileSplats scratch;
    return scratch;
}

// flags[j] = splat j of the structure-of-arrays `raw` may be blended in
// `rect`. The Splat is built by a call (splat_from): one declared in the loop
// and filled field by field does not vectorise.
DGR_INLINE void flag_raw_splats_in_rect(TileSplats& ts, int64_t n, const PixelRect& rect) {
    int32_t* flags = ts.flags.data();
    const TileSplats& c = ts;
    const float* raw = ts.raw.data();
    const float x0 = float(rect.x0), y0 = float(rect.y0), x1 = float(rect.x1), y1 = float(rect.y1);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) flags[j] = dgr::splat_may_touch_rect(c.splat_from(raw, j), x0, y0, x1, y1) ? 1 : 0;
}

// The same for the tile's kept splats, with the cull forms load_tile stored
// (all 1 when culling is off: load_tile then computes no forms, and the flag
// does not depend on what their fields hold).
DGR_INLINE void flag_kept_splats_in_rect(TileSplats& ts, const PixelRect& rect, bool cull) {
    int32_t* flags = ts.flags.data();
    const TileSplats& c = ts;
    const float x0 = float(rect.x0), y0 = float(rect.y0), x1 = float(rect.x1), y1 = float(rect.y1);
#pragma omp simd
    for (int64_t j = 0; j < ts.count; ++j)
        flags[j] = (!cull | dgr::splat_may_touch_rect(c.splat(j).mean, c.cull_form(j), x0, y0, x1, y1)) ? 1 : 0;
}

// out = the j in [0, n) whose flag is set, in order; returns how many.
DGR_INLINE int64_t flagged(const int32_t* flags, int64_t n, int32_t* out) {
    int64_t count = 0;
    for (int64_t j = 0; j < n; ++j) {
        out[count] = int32_t(j);
        count += flags[j];
    }
    return count;
}

DGR_INLINE void pack_splat(const dgr::Splat& s, const dgr::SplatFeatures& feat, SplatRecord& r) {
    r.field[TileSplats::MX] = s.mean.x;
    r.field[TileSplats::MY] = s.mean.y;
    r.field[TileSplats::CA] = s.conic_opacity.x;
    r.field[TileSplats::CB] = s.conic_opacity.y;
    r.field[TileSplats::CC] = s.conic_opacity.z;
    r.field[TileSplats::OPACITY] = s.conic_opacity.w;
    for (int k = 0; k < NF; ++k) r.field[TileSplats::FEATURE0 + k] = feat.v[k];
}

// The record of Gaussian g from the preprocess's outputs.
DGR_INLINE void pack_stored_splat(const dgr::SplatSource& src, int64_t g, SplatRecord& r) {
    dgr::Splat s;
    dgr::SplatFeatures feat;
    dgr::load_splat(src, g, s, feat);
    pack_splat(s, feat, r);
}

// How many entries ahead the tile loops prefetch what they read or write at
// scattered Gaussians (splat records, statistics and gradient slots): 12 to
// 40 measured alike for the records, 32 no better than 16 for the slots.
constexpr int64_t SCATTERED_PREFETCH_AHEAD = 16;

struct Frame {
    int64_t H, W;
    TileGrid grid;
    PixelRect tile_rect(int64_t tile) const {
        const int x0 = int(tile % grid.grid_x) * TILE_X, y0 = int(tile / grid.grid_x) * TILE_Y;
        return PixelRect{x0, y0, int(std::min<int64_t>(x0 + TILE_X, W)) - 1, int(std::min<int64_t>(y0 + TILE_Y, H)) - 1};
    }
    PixelRect block_rect(const PixelRect& tile, int b) const {
        const int x0 = tile.x0 + (b % BLOCKS_X) * BLOCK_W, y0 = tile.y0 + (b / BLOCKS_X) * BLOCK_H;
        return PixelRect{x0, y0, std::min(x0 + BLOCK_W - 1, tile.x1), std::min(y0 + BLOCK_H - 1, tile.y1)};
    }
};

// What both passes' tile loops read: the frame, the splats and their tile lists.
struct TileArgs {
    Frame frame;
    const SplatRecord* records;  // [P]: of the Gaussians that touch a tile
    const int64_t* ranges;
    const int32_t* points;
    const int64_t* gaussian_offsets;  // [P+1] (for entry_slot)
    int64_t num_entries;
    const float* bg;
    bool cull;
};

// The entry slots of a tile's list entries, computed from their records as
// load_tile reads them (after the tile's blocks, which evict the records,
// reading them again made garden-x3's backward tiles 20% slower), and
// whether each entry's tile lies inside its record's rectangle and its slot
// below num_entries (if not, the records do not belong to these lists: the
// backward refuses them).
struct TileSlots {
    int64_t tx, ty;
    const int64_t* gaussian_offsets;
    uint64_t num_entries;
    int64_t* slots;
    int outside = 0;  // (bitwise: no branch per entry)
    TileSlots(const TileArgs& a, TileSplats& ts, int64_t tile)
        : tx(tile % a.frame.grid.grid_x),
          ty(tile / a.frame.grid.grid_x),
          gaussian_offsets(a.gaussian_offsets),
          num_entries(uint64_t(a.num_entries)),
          slots(ts.slots.data()) {}
    DGR_INLINE void add(int64_t p, int64_t g, const SplatRecord& r) {
        const int64_t slot = entry_slot(r, gaussian_offsets, g, tx, ty);
        slots[p] = slot;
        outside |= int(tx < r.rect.min_x) | int(tx >= r.rect.max_x) | int(ty < r.rect.min_y) |
                   int(ty >= r.rect.max_y) | int(uint64_t(slot) >= num_entries);
    }
};

// Loads the splats of tile-list entries [begin, end) that may be blended in
// the tile's pixels (all of them when culling is off): first the splat
// geometry of every entry into the `raw` fields, then, for the kept ones,
// the whole record into the compact arrays.
// Which entry slots load_tile computes into ts.slots: none; those of the
// kept splats (slots[i] for kept splat i: the forward's statistics, written
// for splats that blended); or those of all the tile's entries (slots[p] for
// entry p: the backward's gradients, zero for the culled ones).
enum class SlotsOf { NONE, KEPT, ALL };

DGR_INLINE bool load_tile(TileSplats& ts, const TileArgs& a, int64_t tile, const PixelRect& rect, SlotsOf slots_of) {
    const SplatRecord* records = a.records;
    const int32_t* points = a.points;
    const bool cull = a.cull;
    const int64_t begin = a.ranges[tile], n = a.ranges[tile + 1] - begin;
    ts.reserve(n);
    TileSlots slots(a, ts, tile);
    float* f[TileSplats::NUM_STORED];
    for (int k = 0; k < TileSplats::NUM_STORED; ++k) f[k] = ts.field(k);
    int64_t m = n;
    if (cull) {
        float* raw[TileSplats::FEATURE0];
        for (int k = 0; k < TileSplats::FEATURE0; ++k) raw[k] = ts.raw_field(k);
        // (the records lie at scattered Gaussians, in depth order: each is
        // prefetched SCATTERED_PREFETCH_AHEAD entries before it is read, as the
        // core kept too few of these misses in flight by itself)
        for (int64_t j = 0; j < n; ++j) {
            if (j + SCATTERED_PREFETCH_AHEAD < n) __builtin_prefetch(records + points[begin + j + SCATTERED_PREFETCH_AHEAD]);
            const int64_t g = points[begin + j];
            const SplatRecord& r = records[g];
            for (int k = 0; k < TileSplats::FEATURE0; ++k) raw[k][j] = r.field[k];
            if (slots_of == SlotsOf::ALL) slots.add(j, g, r);
        }
        flag_raw_splats_in_rect(ts, n, rect);
        m = flagged(ts.flags.data(), n, ts.position.data());
    } else {
        for (int64_t j = 0; j < n; ++j) {
            ts.position[j] = int32_t(j);
            if (slots_of == SlotsOf::ALL) slots.add(j, points[begin + j], records[points[begin + j]]);
        }
    }
    const int32_t* position = ts.position.data();
    for (int64_t i = 0; i < m; ++i) {
        const int64_t g = points[begin + position[i]];
        const SplatRecord& r = records[g];
        for (int k = 0; k < TileSplats::NUM_FIELDS; ++k) f[k][i] = r.field[k];
        if (slots_of == SlotsOf::KEPT) slots.add(i, g, r);
    }
    ts.count = m;
    if (!cull) return slots.outside == 0;
    // the kept splats' cull forms, for block_list (each is tested against
    // every block of the tile: its divisions and logarithm once, not 8 times;
    // the raw test above computed them for every entry and kept none: storing
    // them there would cost every entry four stores for the kept ones' sake)
    const TileSplats& c = ts;
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
        const dgr::RectCullForm form = dgr::rect_cull_form(c.splat(i));
        f[TileSplats::KX][i] = form.kx;
        f[TileSplats::KY][i] = form.ky;
        f[TileSplats::Q_SCALE][i] = form.q_scale;
        f[TileSplats::Q_LIMIT][i] = form.q_limit;
    }
    return slots.outside == 0;
}

// The list of the tile's (kept) splats that may be blended in `rect`;
// returns its length.
DGR_INLINE int64_t block_list(TileSplats& ts, const PixelRect& rect, bool cull) {
    flag_kept_splats_in_rect(ts, rect, cull);
    return flagged(ts.flags.data(), ts.count, ts.list.data());
}

// Lane l of a block at (x0, y0) is the pixel (x0 + l % BLOCK_W, y0 + l / BLOCK_W).
struct BlockLanes {
    alignas(64) float px[LANES];
    alignas(64) float py[LANES];
    alignas(64) int32_t inside[LANES];
    int64_t pix[LANES];
    DGR_INLINE void init(const Frame& fr, const PixelRect& r) {
        for (int l = 0; l < LANES; ++l) {
            const int x = r.x0 + l % BLOCK_W, y = r.y0 + l / BLOCK_W;
            inside[l] = (x <= r.x1 && y <= r.y1) ? 1 : 0;
            px[l] = float(x);
            py[l] = float(y);
            pix[l] = inside[l] ? int64_t(y) * fr.W + x : 0;
        }
    }
};

// The sum (max, count) of v[0..N) in a fixed pairwise order: halves added
// lane by lane, N/2, N/4, ..., 1 (the same on every ISA). In registers: each
// halving is one element-wise vector operation (GCC vector extensions, which
// any x86-64 lowers to exact SSE/AVX operations in the same order), as GCC
// left the scalar form unvectorised (~45 scalar operations per entry in the
// forward's statistics flush).
#if defined(__GNUC__) && !defined(__clang__)
// (GCC notes that a vector returned by value changes the ABI without AVX:
// these calls are all inlined, so no ABI is involved)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
template <int N, typename T, typename Op>
DGR_INLINE T lane_tree(const T* v, Op op) {
    if constexpr (N == 1) {
        return v[0];
    } else {
        T half[N / 2];
#if defined(__GNUC__)
        if constexpr (N >= 4) {
            typedef T Half __attribute__((vector_size(N / 2 * sizeof(T))));
            Half lo, hi;
            std::memcpy(&lo, v, sizeof(Half));
            std::memcpy(&hi, v + N / 2, sizeof(Half));
            const Half h = op(lo, hi);
            std::memcpy(half, &h, sizeof(Half));
            return lane_tree<N / 2>(half, op);
        }
#endif
        for (int l = 0; l < N / 2; ++l) half[l] = op(v[l], v[l + N / 2]);
        return lane_tree<N / 2>(half, op);
    }
}
template <int N, typename T>
DGR_INLINE T lane_sum(const T* v) {
    return lane_tree<N>(v, [](auto a, auto b) { return a + b; });
}
template <int N, typename T>
DGR_INLINE T lane_max(const T* v) {
    return lane_tree<N>(v, [](auto a, auto b) { return b > a ? b : a; });
}

// Raises unless the records of the drawn Gaussians (tiles_touched > 0)
// agree with the tile counts and offsets: a rectangle in the tile grid of
// tiles_touched[g] tiles, and a first slot of gaussian_offsets[g]
// (tiles_touched and gaussian_offsets already checked, rasterize_checks.h).
// Then, with the tile loops' per-entry check (TileSlots, in load_tile), each entry
// of a drawn Gaussian writes a slot of that Gaussian's own, which no other
// tile writes. (An entry of a Gaussian that was not drawn, whose record was
// never written, is held to its slot lying in [0, E).)
void check_splat_records(const SplatRecord* records, const int* tiles_touched, const int64_t* offsets, int64_t P,
                         const TileGrid& grid) {
    // (chunks handed out one at a time: the drawn Gaussians, whose records
    // are read, are often bunched in the index range)
    std::atomic<bool> agree{true};
    parallel_for_chunks(P, VisibleRuns::CHUNK, [&](int64_t begin, int64_t end) {
        bool ok = true;
        for (int64_t g = begin; g < end; ++g) {
            if (tiles_touched[g] <= 0) continue;
            const dgr::TileRect& q = records[g].rect;
            ok &= 0 <= q.min_x && q.min_x < q.max_x && q.max_x <= grid.grid_x && 0 <= q.min_y && q.min_y < q.max_y &&
                  q.max_y <= grid.grid_y && q.area() == tiles_touched[g] &&
                  offsets[begin] + int64_t(records[g].chunk_slot) == offsets[g];
        }
        if (!ok) agree.store(false, std::memory_order_relaxed);
    });
    TORCH_CHECK(agree.load(), "rasterize_backward_cpu: state.splat_records: expected the forward's records of the drawn "
                "Gaussians (a tile rectangle of tiles_touched tiles, the first slot gaussian_offsets), got others");
}

// The forward's per-Gaussian preprocess of [begin, end), in blocks. Pass 1
// runs dgr::project_geometry (project_gaussian without attributes_finite)
// vectorised across the block into structure-of-arrays scratch: scalar, its
// cull tests mispredict on real scenes, and its divisions and square roots
// are latency bound. (The block's radii and tile counts are zeroed first; a
// block wholly behind the near plane stops there.) Pass 2, scalar, writes
// the survivors only, after attributes_finite and
// with their colours. The results are preprocess_gaussian's bit for bit
// (the same function; -ffp-contract=off). The scalar path runs instead given
// cov3D_precomp (a stride-6 load GCC does not vectorise) or `scalar` (with
// DGR_CPU_CULL=0, so that tests/test_cpu_culling.py compares the two).
constexpr int PREPROCESS_BLOCK = 256;

// Spherical harmonics run vectorised (in the forward's preprocess and the
// backward's pass 2) when stored SH_COEFFS to a Gaussian, what 3DGS
// training allocates (degree 3, whatever degree is active), at degrees 0-3,
// read through by-lane buffers: a row per coefficient entry, a lane per
// Gaussian of the block.
constexpr int SH_COEFFS = 16;
constexpr int SH_ENTRIES = 3 * SH_COEFFS;
// The row length of the by-lane buffers: a block and a cache line more, so
// that a lane's entries (one per row) do not all fall in the same few L1
// sets, as they did 1,024 bytes apart (the SH buffers' transposition took
// a third of pass 2).
constexpr int LANE_ROW = PREPROCESS_BLOCK + 16;

// The active SH degree when the inputs' SH run vectorised, else -1.
int vectorised_sh_degree(const dgr::GaussianInputs& in) {
    const bool sh = in.colors_precomp == nullptr && in.cov3D_precomp == nullptr;
    return sh && in.sh_coeffs == SH_COEFFS && in.sh_degree >= 0 && in.sh_degree <= 3 ? in.sh_degree : -1;
}

// `in` (a loop's local copy) reading SH of degree SH_DEGREE from a by-lane
// buffer: entry e of Gaussian row_first + lane at by_lane[e][lane]; the
// case's degree and layout become constants of the loop.
template <int SH_DEGREE>
DGR_INLINE void read_sh_by_lane(dgr::GaussianInputs& in, const float (*by_lane)[LANE_ROW], int row_first) {
    in.colors_precomp = nullptr;
    in.sh_degree = SH_DEGREE;
    in.sh_coeffs = SH_COEFFS;
    in.shs = by_lane[0];
    in.sh_layout = dgr::ShLayout{row_first, 1, LANE_ROW};
}

// Prefetches the first `entries` SH entries of a Gaussian's row (read once,
// at scattered Gaussians, by the copies into the by-lane buffers).
DGR_INLINE void prefetch_sh_row(const float* row, int entries) {
    const char* bytes = reinterpret_cast<const char*>(row);
    for (int byte = 0; byte < entries * int(sizeof(float)); byte += 64) __builtin_prefetch(bytes + byte);
}

// Pass 1's results for a block, one array per field.
struct ProjectedBlock {
    float radius[PREPROCESS_BLOCK];
    float mean_x[PREPROCESS_BLOCK], mean_y[PREPROCESS_BLOCK], depth[PREPROCESS_BLOCK];
    float conic_x[PREPROCESS_BLOCK], conic_y[PREPROCESS_BLOCK], conic_z[PREPROCESS_BLOCK];
    float opacity_scale[PREPROCESS_BLOCK];
    int rect[4][PREPROCESS_BLOCK];
    int candidate[PREPROCESS_BLOCK];  // (int: a bool array would force 64 lanes)
};

// The camera with its matrices copied into this object, a local of the
// caller's: the stores of a loop across Gaussians could alias the caller's
// matrices, which would keep GCC from hoisting their loads.
struct LocalCamera {
    float view[16], projm[16];
    dgr::Camera cam;
    explicit LocalCamera(const dgr::Camera& c) : cam(c) {
        std::copy_n(c.viewmatrix, 16, view);
        std::copy_n(c.projmatrix, 16, projm);
        cam.viewmatrix = view;
        cam.projmatrix = projm;
    }
    LocalCamera(const LocalCamera&) = delete;  // (cam points into this object)
    LocalCamera& operator=(const LocalCamera&) = delete;
};

// Pass 1 for a block, compiled per case of antialiasing (a branch on it,
// even an invariant one, keeps GCC from vectorising).
template <bool ANTIALIASING>
DGR_INLINE void project_block(const dgr::GaussianInputs& in_ref, const dgr::Camera& cam_ref, const TileGrid& grid,
                              int first, int n, ProjectedBlock& out) {
    // Local copies, with the cases as constants: the loop's stores could
    // alias the pointers' homes, which would keep GCC from hoisting their
    // loads (and the camera: LocalCamera).
    dgr::GaussianInputs in = in_ref;
    in.cov3D_precomp = nullptr;  // (the caller's case)
    in.antialiasing = ANTIALIASING;
    const LocalCamera local(cam_ref);
    const dgr::Camera& cam = local.cam;
    const int grid_x = grid.grid_x, grid_y = grid.grid_y;
#pragma omp simd  // hot: must vectorise (AVX2 and up)
    for (int j = 0; j < n; ++j) {
        const int i = first + j;
        const dgr::GaussianProjection g = dgr::project_geometry(in, i, cam, grid_x, grid_y);
        out.candidate[j] = g.visible;  // (attributes_finite follows in pass 2)
        out.radius[j] = g.radius;
        out.mean_x[j] = g.mean2D.x;
        out.mean_y[j] = g.mean2D.y;
        out.depth[j] = g.t_view.z;
        out.conic_x[j] = g.conic.x;
        out.conic_y[j] = g.conic.y;
        out.conic_z[j] = g.conic.z;
        out.opacity_scale[j] = g.opacity_scale;
        out.rect[0][j] = g.rect.min_x;
        out.rect[1][j] = g.rect.min_y;
        out.rect[2][j] = g.rect.max_x;
        out.rect[3][j] = g.rect.max_y;
    }
}

// The colours of a block's candidates (block positions candidates[0, count))
// from spherical harmonics of degree SH_DEGREE (vectorised_sh_degree),
// vectorised across them: their coefficients and means are copied into the
// by-lane buffer `sh` and `means` in candidate order (so that every lane
// evaluated is a candidate), then sh_color runs on those copies. colors[c]
// is candidate c's, gaussian_color's bit for bit.
struct ShScratch {
    float sh[SH_ENTRIES][LANE_ROW];
    float means[3 * PREPROCESS_BLOCK];
    float colors[3][PREPROCESS_BLOCK];
};
template <int SH_DEGREE>
DGR_INLINE void candidate_sh_colors(const dgr::GaussianInputs& in_ref, const dgr::Camera& cam_ref, int first,
                                    const int32_t* candidates, int count, ShScratch& out) {
    constexpr int USED = 3 * (SH_DEGREE + 1) * (SH_DEGREE + 1);  // the entries this degree reads
    constexpr int AHEAD = 4;
    for (int c = 0; c < count; ++c) {
        if (c + AHEAD < count) prefetch_sh_row(in_ref.shs + (first + candidates[c + AHEAD]) * int64_t(SH_ENTRIES), USED);
        const int64_t i = first + candidates[c];
        const float* row = in_ref.shs + i * SH_ENTRIES;
        for (int e = 0; e < USED; ++e) out.sh[e][c] = row[e];
        for (int k = 0; k < 3; ++k) out.means[3 * c + k] = in_ref.means3D[3 * i + k];
    }
    dgr::GaussianInputs in = in_ref;  // (local, with the case as constants: see project_block)
    read_sh_by_lane<SH_DEGREE>(in, out.sh, 0);  // (lane c: candidate c)
    const LocalCamera local(cam_ref);
    const dgr::Camera& cam = local.cam;
#pragma omp simd  // hot: must vectorise (AVX2 and up)
    for (int c = 0; c < count; ++c) {
        const glm::vec3 color =
            dgr::sh_color(in, c, glm::vec3(out.means[3 * c], out.means[3 * c + 1], out.means[3 * c + 2]), cam);
        out.colors[0][c] = color.x;
        out.colors[1][c] = color.y;
        out.colors[2][c] = color.z;
    }
}

// Whether some Gaussian of [first, first + n) is in front of the near plane
// (project_geometry's test, on the same view-space depth): a block with none
// draws nothing, and skipping it skips the reads of its scales and rotations
// (a scene seen from inside has many such blocks: 40% of garden-x3's
// Gaussians are behind the camera).
DGR_INLINE bool any_in_front(const dgr::GaussianInputs& in, const dgr::Camera& cam, int first, int n) {
    float view[16];
    std::copy_n(cam.viewmatrix, 16, view);
    const float* means = in.means3D + 3 * int64_t(first);
    // (scalar, stopping at the first one in front: a block in front costs
    // next to nothing, one behind ~5 cycles per Gaussian; GCC did not
    // vectorise this loop as a `#pragma omp simd` reduction)
    for (int j = 0; j < n; ++j)
        if (dgr::in_front_of_near_plane(dgr::transform_point_4x3(dgr::load_vec3(means, j), view))) return true;
    return false;
}

// The preprocess of Gaussians [begin, end) (a chunk of VisibleRuns), and for
// each one that touches a tile, while its fields are still in cache, its
// SplatRecord and its depth-sort item. (src, the tile loops' view of proj's
// arrays, gives the scalar path's records.)
DGR_MULTIVERSION void preprocess_range(const dgr::GaussianInputs& in, const dgr::Camera& cam, const TileGrid& grid,
                                       const dgr::ProjectedGaussians& proj, const dgr::SplatSource& src,
                                       SplatRecord* records, VisibleRuns& runs, int64_t begin, int64_t end,
                                       bool scalar) {
    // What a culled Gaussian [i, i + count) gets: radius 0, no tiles. (Its
    // other fields are never read: everything downstream goes by
    // tiles_touched. Zeroing them was 56 B per Gaussian, ~2 ms on a million.)
    auto zero = [&](int64_t i, int64_t count) {
        std::fill_n(proj.radii + i, count, 0);
        std::fill_n(proj.tiles_touched + i, count, 0);
    };
    VisibleRuns::Run run(runs, begin);
    if (scalar || in.cov3D_precomp != nullptr) {
        for (int64_t i = begin; i < end; ++i) {
            dgr::preprocess_gaussian(int(i), in, cam, grid.grid_x, grid.grid_y, proj);
            if (proj.tiles_touched[i] <= 0) continue;
            pack_stored_splat(src, i, records[i]);
            const int* rect = proj.tile_rects + 4 * i;
            run.add(i, proj.depths[i], dgr::TileRect{rect[0], rect[1], rect[2], rect[3]}, records[i]);
        }
        run.close();
        return;
    }
    ProjectedBlock blk;
    const int sh_degree = vectorised_sh_degree(in);
    // (58 KB: on the heap, once per range; not zeroed, as make_unique would:
    // candidate_sh_colors reads only what it wrote)
    std::unique_ptr<ShScratch> sh;
    if (sh_degree >= 0) sh.reset(new ShScratch);
    for (int64_t b = begin; b < end; b += PREPROCESS_BLOCK) {
        const int n = int(std::min<int64_t>(PREPROCESS_BLOCK, end - b));
        const int first = int(b);
        zero(first, n);
        if (!any_in_front(in, cam, first, n)) continue;
        if (in.antialiasing)
            project_block<true>(in, cam, grid, first, n, blk);
        else
            project_block<false>(in, cam, grid, first, n, blk);
        // over the candidates' list (no branch on each Gaussian's outcome,
        // which mispredicted: a real scene's visible ones come in no order)
        int32_t candidates[PREPROCESS_BLOCK];
        const int64_t num_candidates = flagged(blk.candidate, n, candidates);
        switch (sh_degree) {
            case 0: candidate_sh_colors<0>(in, cam, first, candidates, int(num_candidates), *sh); break;
            case 1: candidate_sh_colors<1>(in, cam, first, candidates, int(num_candidates), *sh); break;
            case 2: candidate_sh_colors<2>(in, cam, first, candidates, int(num_candidates), *sh); break;
            case 3: candidate_sh_colors<3>(in, cam, first, candidates, int(num_candidates), *sh); break;
            default: break;
        }
        for (int64_t c = 0; c < num_candidates; ++c) {
            const int j = candidates[c];
            const int i = first + j;
            if (!dgr::attributes_finite(in, i)) continue;
            dgr::GaussianProjection g;  // the fields write_projection reads
            g.radius = blk.radius[j];
            g.mean2D = glm::vec2(blk.mean_x[j], blk.mean_y[j]);
            g.t_view.z = blk.depth[j];
            g.conic = glm::vec3(blk.conic_x[j], blk.conic_y[j], blk.conic_z[j]);
            g.opacity_scale = blk.opacity_scale[j];
            g.rect = dgr::TileRect{blk.rect[0][j], blk.rect[1][j], blk.rect[2][j], blk.rect[3][j]};
            const glm::vec3 color = sh_degree >= 0 ? glm::vec3(sh->colors[0][c], sh->colors[1][c], sh->colors[2][c])
                                                   : dgr::gaussian_color(in, i, cam);
            // (write_projection's radius, rectangle and tile count; its other
            // fields only in the record: four more arrays' stores, scattered
            // at the drawn Gaussians, took a tenth of garden-x3's preprocess)
            dgr::write_coverage(i, g, proj);
            if (proj.tiles_touched[i] <= 0) continue;
            dgr::Splat s;
            dgr::SplatFeatures feat;
            dgr::projected_splat(i, in, g, color, s, feat);
            pack_splat(s, feat, records[i]);
            run.add(i, g.t_view.z, g.rect, records[i]);
        }
    }
    run.close();
}

struct ForwardArgs : TileArgs {
    float* color;
    float* importance;
    float* invdepth;
    float* final_T;
    float* alpha;  // PixelAccumulator::alpha(): 1 - final_T
    int* n_contrib;
    dgr::SplatStats* slot_stats;   // statistics: [E] per (Gaussian, tile) entry, in slot order; null: none
    const float* pixel_weight;     // null: weights 1
};

// The per-lane state of the forward. Two copies live on the stack and each
// step over a splat reads one and writes the other (never the same array,
// and never through a variable index): then every load and store of the
// step is unconditional and provably in bounds, which is what the compiler
// needs to turn the step's conditions into selects and vectorise it.
struct ForwardLanes {
    alignas(64) float T[LANES];
    alignas(64) float feature[NF][LANES];
    alignas(64) int32_t last[LANES];     // tile-list position + 1 of the last blended splat
    alignas(64) int32_t running[LANES];  // 0 once the pixel is done (or outside the image)
};

// Per-lane state of the statistics over a block.
struct StatsLanes {
    alignas(64) float pixel_weight[LANES];
    alignas(64) float top_weight[LANES];  // PixelTopContributor
    alignas(64) int32_t top_id[LANES];
};

DGR_INLINE bool any_lane(const int32_t* v) {
    int32_t any = 0;
    for (int l = 0; l < LANES; ++l) any |= v[l];
    return any != 0;
}

// One splat (entry j of the tile) over all pixels of the block: in -> out.
// Returns whether some pixel of the block is still running.
// With statistics, writes the weight each pixel blended the splat with (alpha
// T, 0 where it did not) to weight_row.
template <bool kStats>
DGR_INLINE bool forward_step(const ForwardLanes& in, ForwardLanes& out, TileSplats& ts, int32_t j,
                             const BlockLanes& b, float* weight_row) {
    const dgr::Splat s = ts.splat(j);
    const dgr::SplatFeatures f = ts.features(j);
    const int32_t position = ts.position[j];
#pragma omp simd  // hot: must vectorise (tests/test_cpu_vectorised.py)
    for (int l = 0; l < LANES; ++l) {
        float alpha, G;
        const bool pass = dgr::splat_alpha(s.conic_opacity, s.mean.x - b.px[l], s.mean.y - b.py[l], alpha, G);
        dgr::PixelAccumulator acc;
        acc.T = in.T[l];
        for (int k = 0; k < NF; ++k) acc.feature[k] = in.feature[k][l];
        acc.last_weight = 0.f;
        bool finished = false;
        const bool took = acc.blend_if((in.running[l] != 0) & pass, alpha, f, finished);
        out.T[l] = acc.T;
        for (int k = 0; k < NF; ++k) out.feature[k][l] = acc.feature[k];
        out.last[l] = took ? position + 1 : in.last[l];
        out.running[l] = finished ? 0 : in.running[l];
        // (0 where the pixel did not blend the splat: a blended alpha T is
        // always > 0, as alpha >= 1/255 and T >= 1e-4)
        if (kStats) weight_row[l] = took ? acc.last_weight : 0.0f;
    }
    return any_lane(out.running);
}

// The statistics of a block's first n steps (splats list[0, n)), from the
// weight rows forward_step wrote: each splat's pixels folded to STAT_LANES
// partial sums of accum_weight in a fixed order (lanes l and l + STAT_LANES)
// and to STAT_EXACT_LANES of max_weight and hit_count, then added to the
// splat's sums so far; and each pixel's top contributor. Done here, after
// the steps, rather than in each step: a micro-benchmark of the step put the
// statistics at +44% of it in the step and +24% here (benchmarks/RESULTS.md).
// kPixelWeights: whether sl.pixel_weight holds the caller's weights (else all
// are 1).
template <bool kPixelWeights>
DGR_INLINE void fold_block_statistics(TileSplats& ts, const int32_t* list, int64_t n, StatsLanes& sl) {
    constexpr int Q = STAT_LANES;
    const float* pixel_weight = sl.pixel_weight;
    const int64_t reach = n > 0 ? list[n - 1] + 1 : 0;  // (the list ascends)
    if (reach > ts.stats_reached) {
        const int64_t from = ts.stats_reached, count = reach - from;
        std::fill_n(ts.stat_lanes.data() + from, count, SplatStatLanes{});
        std::fill_n(ts.top_count.data() + from, count, 0);
        ts.stats_reached = reach;
    }
    for (int64_t i = 0; i < n; ++i) {
        const int32_t j = list[i];
        const float* w = ts.weight_rows.data() + i * LANES;
#pragma omp simd  // hot: must vectorise (tests/test_cpu_vectorised.py)
        for (int l = 0; l < LANES; ++l) {
            dgr::TopContributor<int32_t> top;
            top.weight = sl.top_weight[l];
            top.id = sl.top_id[l];
            top.offer(w[l], j);
            sl.top_weight[l] = top.weight;
            sl.top_id[l] = top.id;
        }
        // pixel_stats and merge_stats written out, as GCC failed to
        // vectorise their struct here: the same terms, pixel_weight * w
        // where the pixel blended the splat (w > 0) and 0 where not
        // (pixel_weight * 0 may be NaN for a non-finite pixel weight;
        // without pixel weights, w itself: 1 * w is w, and w is 0 where not
        // blended), w as its max_weight (0 where not blended: leaves a
        // max_weight >= 0 as it is), and merge_stats' max (the second where
        // greater). The products are taken unconditionally: a conditional
        // load kept the baseline x86-64 clone scalar.
        SplatStatLanes& sums = ts.stat_lanes[j];
        alignas(64) float pair_max[Q];
        alignas(64) int32_t pair_hits[Q];
#pragma omp simd  // hot: must vectorise (tests/test_cpu_vectorised.py)
        for (int l = 0; l < Q; ++l) {
            const float w0 = w[l], w1 = w[l + Q];
            // (sl.pixel_weight is not set without pixel weights: not read then)
            const float p0 = kPixelWeights ? pixel_weight[l] * w0 : 0.f;
            const float p1 = kPixelWeights ? pixel_weight[l + Q] * w1 : 0.f;
            sums.accum[l] += kPixelWeights ? (w0 > 0.f ? p0 : 0.f) + (w1 > 0.f ? p1 : 0.f) : w0 + w1;
            pair_max[l] = w1 > w0 ? w1 : w0;
            pair_hits[l] = int32_t(w0 > 0.f) + int32_t(w1 > 0.f);
        }
        // (max and hit count: lanes l and l + X of the pair's, then the sums')
        constexpr int X = STAT_EXACT_LANES;
#pragma omp simd  // hot: must vectorise (tests/test_cpu_vectorised.py)
        for (int l = 0; l < X; ++l) {
            const float m = pair_max[l + X] > pair_max[l] ? pair_max[l + X] : pair_max[l];
            sums.max[l] = m > sums.max[l] ? m : sums.max[l];
            sums.hits[l] += pair_hits[l] + pair_hits[l + X];
        }
    }
}

// Each pixel of the block adds one to its top contributor's top_count: one
// splat at a time (the largest id left first), all of its pixels at once.
// (Pixel by pixel, each increment waited on the one before it to the same
// counter, as neighbouring pixels mostly share their top contributor: 2.7%
// of forward_tile's samples on garden, against ~0.7% this way.)
DGR_INLINE void count_top_contributors(TileSplats& ts, const BlockLanes& b, const StatsLanes& sl) {
    alignas(64) int32_t id[LANES];
    for (int l = 0; l < LANES; ++l) id[l] = b.inside[l] ? sl.top_id[l] : -1;  // (-1: none)
    for (;;) {
        const int32_t top = lane_max<LANES>(id);
        if (top < 0) return;
        int32_t pixels = 0;
#pragma omp simd reduction(+ : pixels)
        for (int l = 0; l < LANES; ++l) {
            const bool is_top = id[l] == top;
            pixels += is_top ? 1 : 0;
            id[l] = is_top ? -1 : id[l];
        }
        ts.top_count[top] += pixels;
    }
}

// Front to back over the block's splats, all pixels of the block at once.
template <bool kStats>
DGR_INLINE void forward_block(const ForwardArgs& a, TileSplats& ts, const int32_t* list, int64_t count,
                              const PixelRect& r) {
    BlockLanes b;
    b.init(a.frame, r);
    ForwardLanes A, B;
    StatsLanes sl;
    for (int l = 0; l < LANES; ++l) {
        const dgr::PixelAccumulator acc;
        A.T[l] = acc.T;
        for (int k = 0; k < NF; ++k) A.feature[k][l] = acc.feature[k];
        A.last[l] = 0;
        A.running[l] = b.inside[l];
        const dgr::TopContributor<int32_t> top;
        sl.top_weight[l] = 0.f;  // (not top.weight = -1: a splat not blended offers 0, which must not win)
        sl.top_id[l] = top.id;
    }
    // (read by the statistics' fold with pixel weights only: made for every
    // block, it was a scalar loop with two branches a lane, 2.7% of
    // forward_tile's samples on garden-2x; b.pix is 0, a valid pixel,
    // outside the image, so the load needs no branch)
    if (kStats && a.pixel_weight != nullptr)
        for (int l = 0; l < LANES; ++l) {
            const float weight = a.pixel_weight[b.pix[l]];
            sl.pixel_weight[l] = b.inside[l] ? weight : 1.0f;
        }
    // (step i writes its statistics' weights to row i)
    // (force-inlined: `flatten` alone once left it out of line, unvectorised
    // past baseline x86-64, when the statistics' fold grew)
    auto step = [&](const ForwardLanes& in, ForwardLanes& out, int64_t i) DGR_INLINE_LAMBDA {
        return forward_step<kStats>(in, out, ts, list[i], b, ts.weight_rows.data() + i * LANES);
    };
    const ForwardLanes* fin = &A;
    int64_t steps = 0;  // taken
    while (steps < count) {
        fin = &B;
        if (!step(A, B, steps++) || steps == count) break;
        fin = &A;
        if (!step(B, A, steps++)) break;
    }
    if (kStats) {
        if (a.pixel_weight != nullptr)
            fold_block_statistics<true>(ts, list, steps, sl);
        else
            fold_block_statistics<false>(ts, list, steps, sl);
    }
    // The pixels' outputs, computed for every lane at once, then copied
    // row by row into the maps (lane by lane, at computed indices, GCC left
    // this loop scalar: a cost per pixel, which a larger image pays more of).
    constexpr int NUM_MAPS = dgr::NUM_CHANNELS + 4;  // colour, importance, inverse depth, T, alpha
    alignas(64) float maps[NUM_MAPS][LANES];
    const float* bg = a.bg;
#pragma omp simd
    for (int l = 0; l < LANES; ++l) {
        dgr::PixelAccumulator acc;
        acc.T = fin->T[l];
        for (int k = 0; k < NF; ++k) acc.feature[k] = fin->feature[k][l];
        for (int ch = 0; ch < dgr::NUM_CHANNELS; ++ch) maps[ch][l] = acc.final_color(ch, bg);
        maps[dgr::NUM_CHANNELS][l] = acc.importance();
        maps[dgr::NUM_CHANNELS + 1][l] = acc.invdepth();
        maps[dgr::NUM_CHANNELS + 2][l] = acc.T;
        maps[dgr::NUM_CHANNELS + 3][l] = acc.alpha();
    }
    const int64_t W = a.frame.W, HW = a.frame.H * W;
    float* const map_out[NUM_MAPS] = {a.color,      a.color + HW, a.color + 2 * HW, a.importance,
                                      a.invdepth, a.final_T,    a.alpha};
    static_assert(dgr::NUM_CHANNELS == 3, "map_out lists three colour planes");
    const int cols = r.x1 - r.x0 + 1;
    // (a whole row of the block: a copy of constant size, inlined; a
    // variable size is a library call, one per map and row)
    auto copy_row = [cols](const auto* from, auto* to) {
        if (cols == BLOCK_W)
            std::memcpy(to, from, BLOCK_W * sizeof(*from));
        else
            std::copy_n(from, cols, to);
    };
    for (int row = 0; row <= r.y1 - r.y0; ++row) {
        const int64_t first = int64_t(r.y0 + row) * W + r.x0;
        for (int m = 0; m < NUM_MAPS; ++m) copy_row(maps[m] + row * BLOCK_W, map_out[m] + first);
        copy_row(fin->last + row * BLOCK_W, a.n_contrib + first);
    }
    if (kStats) count_top_contributors(ts, b, sl);
}

DGR_MULTIVERSION void forward_tile(const ForwardArgs& a, int64_t tile) {
    TileSplats& ts = thread_scratch();
    const PixelRect rect = a.frame.tile_rect(tile);
    const bool stats = a.slot_stats != nullptr;
    // (the forward's own records: the slots, wanted with statistics, are valid)
    load_tile(ts, a, tile, rect, stats ? SlotsOf::KEPT : SlotsOf::NONE);
    ts.stats_reached = 0;
    for (int blk = 0; blk < BLOCKS_X * BLOCKS_Y; ++blk) {
        const PixelRect r = a.frame.block_rect(rect, blk);
        if (r.empty()) continue;
        const int64_t count = block_list(ts, r, a.cull);
        if (stats)
            forward_block<true>(a, ts, ts.list.data(), count, r);
        else
            forward_block<false>(a, ts, ts.list.data(), count, r);
    }
    if (!stats) return;
    // The statistics of the entries some pixel blended, at their slots (so
    // that the per-Gaussian sum reads its entries in a row); the others stay
    // zero, as the buffer was allocated (see rasterize_forward_cpu). Those
    // splats are listed first, without a branch (about half the splats the
    // blocks reached blended no pixel, at random: a branch per splat
    // mispredicted, and writing zeros too dirtied their lines), into `list`,
    // which the blocks are done with, with their hit counts (into `flags`,
    // which the blocks are done with too); then only their slots are fetched.
    const int64_t m = ts.stats_reached;
    int32_t* blended = ts.list.data();
    int32_t* blended_hits = ts.flags.data();
    int64_t n = 0;
    for (int64_t j = 0; j < m; ++j) {
        const int32_t hits = lane_sum<STAT_EXACT_LANES>(ts.stat_lanes[j].hits);
        blended[n] = int32_t(j);
        blended_hits[n] = hits;
        n += hits > 0 ? 1 : 0;
    }
    const int64_t* slots = ts.slots.data();
    for (int64_t k = 0; k < n; ++k) {
        if (k + SCATTERED_PREFETCH_AHEAD < n) __builtin_prefetch(a.slot_stats + slots[blended[k + SCATTERED_PREFETCH_AHEAD]], 1);
        const int32_t j = blended[k];
        const SplatStatLanes& sums = ts.stat_lanes[j];
        dgr::SplatStats& e = a.slot_stats[slots[j]];  // field by field: no struct copy
        e.accum_weight = lane_sum<STAT_LANES>(sums.accum);
        e.max_weight = lane_max<STAT_EXACT_LANES>(sums.max);
        e.hit_count = blended_hits[k];
        e.top_count = ts.top_count[j];
    }
}

struct BackwardArgs : TileArgs {
    const float* final_T;
    const int* n_contrib;
    const float* dL_dcolor;
    const float* dL_dimportance;
    const float* dL_dinvdepth;
    const float* dL_dalpha;
    float half_w, half_h;
    dgr::SplatGrad* slot_grads;  // [E]: per (Gaussian, tile) gradient, in slot order
    std::atomic<bool>* records_mismatch;  // set by a tile whose records and list disagree
};

// The per-lane state of the backward that changes from splat to splat, in
// two copies (see ForwardLanes), and what stays.
struct BackwardLanes {
    alignas(64) float T[LANES];
    alignas(64) float behind_up[LANES];
};
struct BackwardPixels {
    alignas(64) float T_final[LANES];
    alignas(64) float final_T_term[LANES];
    alignas(64) float up[NF][LANES];
    alignas(64) int32_t n_contrib[LANES];
    alignas(64) float grad[dgr::SPLAT_GRAD_FLOATS][LANES];  // this step's SplatGradSums, per pixel
    alignas(64) int32_t active[LANES];
};

// One splat (entry j of the tile) over all pixels of the block, back to
// front: in -> out; adds its dgr::SplatGradSums, summed over the block, to
// ts.grad_lanes of j.
DGR_INLINE void backward_step(const BackwardLanes& in, BackwardLanes& out, TileSplats& ts, int32_t j,
                              const BlockLanes& b, BackwardPixels& bp) {
    const dgr::Splat s = ts.splat(j);
    const dgr::SplatFeatures f = ts.features(j);
    const int32_t position = ts.position[j];
#pragma omp simd  // hot: must vectorise (tests/test_cpu_vectorised.py)
    for (int l = 0; l < LANES; ++l) {
        const float dx = s.mean.x - b.px[l], dy = s.mean.y - b.py[l];
        float alpha, G;
        const bool pass = dgr::splat_alpha(s.conic_opacity, dx, dy, alpha, G);
        const bool active = (position < bp.n_contrib[l]) & pass;
        dgr::PixelBackward pb;
        pb.T = in.T[l];
        pb.T_final = bp.T_final[l];
        pb.final_T_term = bp.final_T_term[l];
        pb.up.alpha = 0.f;
        for (int k = 0; k < NF; ++k) pb.up.feature[k] = bp.up[k][l];
        pb.behind_up = in.behind_up[l];
        const dgr::SplatGradSums sg = pb.step(s, dx, dy, alpha, G, f);
        out.T[l] = active ? pb.T : in.T[l];
        out.behind_up[l] = active ? pb.behind_up : in.behind_up[l];
        bp.grad[0][l] = active ? sg.opacity_dx : 0.f;
        bp.grad[1][l] = active ? sg.opacity_dy : 0.f;
        bp.grad[2][l] = active ? sg.opacity_dxx : 0.f;
        bp.grad[3][l] = active ? sg.opacity_dxy : 0.f;
        bp.grad[4][l] = active ? sg.opacity_dyy : 0.f;
        bp.grad[5][l] = active ? sg.opacity : 0.f;
        for (int k = 0; k < NF; ++k) bp.grad[6 + k][l] = active ? sg.feature[k] : 0.f;
        bp.active[l] = active ? 1 : 0;
    }
    if (!any_lane(bp.active)) return;
    // Fold the block's lanes to GRAD_LANES in a fixed pairwise order and add
    // them to the splat's partial sums; backward_tile finishes the sum once
    // per splat (cheaper than a full tree over the lanes at every step).
    float* acc = ts.grad_lanes.data() + int64_t(j) * GRAD_FLOATS * GRAD_LANES;
    for (int k = 0; k < GRAD_FLOATS; ++k) {
        const float* v = bp.grad[k];
        float* a = acc + k * GRAD_LANES;
#pragma omp simd  // hot: must vectorise (tests/test_cpu_vectorised.py)
        for (int l = 0; l < GRAD_LANES; ++l)
            a[l] = a[l] + ((v[l] + v[l + 2 * GRAD_LANES]) + (v[l + GRAD_LANES] + v[l + 3 * GRAD_LANES]));
    }
}

// Back to front over the block's splats, all pixels of the block at once;
// adds each splat's gradient, summed over the block, to ts.grads.
DGR_INLINE void backward_block(const BackwardArgs& a, TileSplats& ts, const int32_t* list, int64_t count,
                               const PixelRect& r) {
    BlockLanes b;
    b.init(a.frame, r);
    BackwardLanes A, B;
    BackwardPixels bp;
    const int64_t HW = a.frame.H * a.frame.W;
    int32_t max_contrib = 0;
    for (int l = 0; l < LANES; ++l) {
        const int64_t pix = b.pix[l];
        dgr::PixelUpstream u;
        for (int ch = 0; ch < dgr::NUM_CHANNELS; ++ch) u.feature[ch] = b.inside[l] ? a.dL_dcolor[ch * HW + pix] : 0.f;
        u.feature[dgr::FEATURE_IMPORTANCE] = b.inside[l] ? a.dL_dimportance[pix] : 0.f;
        u.feature[dgr::FEATURE_INVDEPTH] = b.inside[l] ? a.dL_dinvdepth[pix] : 0.f;
        u.alpha = b.inside[l] ? a.dL_dalpha[pix] : 0.f;
        dgr::PixelBackward pb;
        pb.init(b.inside[l] ? a.final_T[pix] : 1.f, u, a.bg);
        A.T[l] = pb.T;
        bp.T_final[l] = pb.T_final;
        bp.final_T_term[l] = pb.final_T_term;
        for (int k = 0; k < NF; ++k) bp.up[k][l] = pb.up.feature[k];
        A.behind_up[l] = pb.behind_up;
        bp.n_contrib[l] = b.inside[l] ? a.n_contrib[pix] : 0;
        max_contrib = std::max(max_contrib, bp.n_contrib[l]);
    }
    // start at the last splat of the list that some pixel blended
    int64_t i = count;
    while (i > 0 && ts.position[list[i - 1]] >= max_contrib) --i;
    while (i > 0) {
        backward_step(A, B, ts, list[--i], b, bp);
        if (i == 0) break;
        backward_step(B, A, ts, list[--i], b, bp);
    }
}

// Prefetches the rows of a block's per-pixel inputs (upstream gradients,
// final T, n_contrib): backward_block reads them at its start, 32 bytes of
// each of eight maps per row, which on a large image are not in cache.
DGR_INLINE void prefetch_block_inputs(const BackwardArgs& a, const PixelRect& r) {
    if (r.empty()) return;
    const int64_t W = a.frame.W, HW = a.frame.H * W;
    const void* maps[8] = {a.dL_dcolor, a.dL_dcolor + HW, a.dL_dcolor + 2 * HW, a.dL_dimportance,
                           a.dL_dinvdepth, a.dL_dalpha, a.final_T, a.n_contrib};
    for (int y = r.y0; y <= r.y1; ++y)
        for (const void* map : maps) __builtin_prefetch(static_cast<const float*>(map) + int64_t(y) * W + r.x0);
}

DGR_MULTIVERSION void backward_tile(const BackwardArgs& a, int64_t tile) {
    TileSplats& ts = thread_scratch();
    const PixelRect rect = a.frame.tile_rect(tile);
    if (!load_tile(ts, a, tile, rect, SlotsOf::ALL)) {
        a.records_mismatch->store(true, std::memory_order_relaxed);
        return;  // (nothing written: the backward raises)
    }
    const int64_t m = ts.count;
    std::fill_n(ts.grad_lanes.data(), m * GRAD_FLOATS * GRAD_LANES, 0.f);  // (fill_n: the buffer may still be empty)
    for (int blk = 0; blk < BLOCKS_X * BLOCKS_Y; ++blk) {
        const PixelRect r = a.frame.block_rect(rect, blk);
        if (r.empty()) continue;
        if (blk + 1 < BLOCKS_X * BLOCKS_Y) prefetch_block_inputs(a, a.frame.block_rect(rect, blk + 1));
        const int64_t count = block_list(ts, r, a.cull);
        backward_block(a, ts, ts.list.data(), count, r);
    }
    // every entry of the tile gets its gradient (zero for the culled ones),
    // written where its Gaussian's pass 2 reads it
    const int64_t n = a.ranges[tile + 1] - a.ranges[tile];
    const int64_t* slot = ts.slots.data();
    float* lanes = ts.grad_lanes.data();
    for (int64_t p = 0, j = 0; p < n; ++p) {
        if (p + SCATTERED_PREFETCH_AHEAD < n) {  // (the slots are scattered: each write missed the cache)
            const char* next = reinterpret_cast<const char*>(a.slot_grads + slot[p + SCATTERED_PREFETCH_AHEAD]);
            __builtin_prefetch(next, 1);
            __builtin_prefetch(next + sizeof(dgr::SplatGrad) - 1, 1);
        }
        if (j < m && ts.position[j] == p) {
            dgr::SplatGradSums sums;
            float* sum = reinterpret_cast<float*>(&sums);
            for (int k = 0; k < GRAD_FLOATS; ++k) sum[k] = lane_sum<GRAD_LANES>(lanes + (j * GRAD_FLOATS + k) * GRAD_LANES);
            a.slot_grads[slot[p]] = dgr::splat_grad(sums, ts.splat(j).conic_opacity, a.half_w, a.half_h);
            ++j;
        } else {
            a.slot_grads[slot[p]] = dgr::SplatGrad{};
        }
    }
}

// What the forward hands to the backward, by name. The order of
// to_vector() is the order documented in rasterize_points.h.
struct ForwardState {
    torch::Tensor splat_records, tiles_touched, gaussian_offsets, tile_ranges, point_list, final_T, n_contrib;

    std::vector<torch::Tensor> to_vector() const {
        return {splat_records, tiles_touched, gaussian_offsets, tile_ranges, point_list, final_T, n_contrib};
    }
    // (count and shapes checked by check_backward_args)
    static ForwardState from_vector(const std::vector<torch::Tensor>& v) {
        namespace ck = dgr::checks;
        return ForwardState{v[ck::CPU_S_SPLAT_RECORDS], v[ck::CPU_S_TILES_TOUCHED], v[ck::CPU_S_GAUSSIAN_OFFSETS],
                            v[ck::CPU_S_TILE_RANGES],   v[ck::CPU_S_POINT_LIST],    v[ck::CPU_S_FINAL_T],
                            v[ck::CPU_S_N_CONTRIB]};
    }
    const SplatRecord* records() const { return reinterpret_cast<const SplatRecord*>(splat_records.data_ptr<float>()); }
};

void add_splat_grad(dgr::SplatGrad& acc, const dgr::SplatGrad& g) {
    float* a = reinterpret_cast<float*>(&acc);
    const float* b = reinterpret_cast<const float*>(&g);
    for (int k = 0; k < dgr::SPLAT_GRAD_FLOATS; ++k) a[k] += b[k];
}

// The summed gradients of a block of Gaussians, field by field (read across
// the lanes: as an array of SplatGrad, 13 floats apart, GCC found the access
// pattern too complicated).
struct BlockGrads {
    float field[dgr::SPLAT_GRAD_FLOATS][LANE_ROW];
    DGR_INLINE dgr::SplatGrad lane(int j) const {
        dgr::SplatGrad g;
        g.mean[0] = field[0][j];
        g.mean[1] = field[1][j];
        for (int k = 0; k < 3; ++k) g.conic[k] = field[2 + k][j];
        g.opacity = field[5][j];
        for (int k = 0; k < dgr::NUM_FEATURES; ++k) g.feature[k] = field[6 + k][j];
        return g;
    }
};

// The backward's pass 2 for a block of Gaussians, across them in SIMD lanes:
// the projection and drawn_gaussian_backward for every lane, in one case of
// the colours (SH_DEGREE < 0: colors_precomp; otherwise spherical harmonics
// of that degree with SH_COEFFS coefficients, read from sh_in[entry][lane],
// their gradients written to sh_lanes[entry][lane]), with the covariance
// from scales and rotations and antialiasing a constant (as in
// project_block). sums holds the summed gradients of Gaussians first + j,
// drawn[j] whether one touched a tile and has finite attributes. Every row
// of the block is written; visible[j] gets which ones hold gradients (the
// caller zeroes the others).
template <bool ANTIALIASING, int SH_DEGREE>
DGR_INLINE void gaussians_backward_block(const dgr::GaussianInputs& in_ref, const dgr::Camera& cam_ref,
                                         const TileGrid& grid, int first, int n, const BlockGrads& sums,
                                         const int* drawn, int* visible, const dgr::GaussianGrads& out_ref,
                                         const float (*sh_in)[LANE_ROW], float (*sh_lanes)[LANE_ROW]) {
    // local copies with the cases as constants (see project_block)
    dgr::GaussianInputs in = in_ref;
    in.cov3D_precomp = nullptr;
    in.antialiasing = ANTIALIASING;
    dgr::GaussianGrads out = out_ref;
    if constexpr (SH_DEGREE < 0) {
#if defined(__GNUC__)
        if (in.colors_precomp == nullptr) __builtin_unreachable();  // (the caller's case: folds the SH branch away)
#endif
    } else {
        read_sh_by_lane<SH_DEGREE>(in, sh_in, first);  // (lane j: Gaussian first + j)
        out.shs = sh_lanes[0];
        out.sh_layout = in.sh_layout;
    }
    const LocalCamera local(cam_ref);
    const dgr::Camera& cam = local.cam;
    const int grid_x = grid.grid_x, grid_y = grid.grid_y;
#pragma omp simd  // hot: must vectorise (AVX2 and up)
    for (int j = 0; j < n; ++j) {
        const int i = first + j;
        const bool projected = dgr::gaussian_backward_unchecked(i, in, cam, grid_x, grid_y, sums.lane(j), out);
        visible[j] = (drawn[j] != 0) & projected;
    }
    if constexpr (SH_DEGREE >= 0) {  // the visible lanes' shs gradients into their rows
        for (int j = 0; j < n; ++j)
            if (visible[j] != 0)
                for (int e = 0; e < SH_ENTRIES; ++e) out_ref.shs[int64_t(first + j) * SH_ENTRIES + e] = sh_lanes[e][j];
    }
}

// What backward_preprocess_range reads.
struct Pass2Args {
    dgr::GaussianInputs in;
    dgr::Camera cam;
    TileGrid grid;
    const int* touched;
    const int64_t* offsets;
    const dgr::SplatGrad* slot_grads;
    dgr::GaussianGrads out;
    int64_t sh_rows;
    // gaussians_backward_block's SH_DEGREE (-1: colors_precomp), or
    // kScalarPass2: the case has no vectorised version (cov3D_precomp, SH
    // stored with another number of coefficients), or culling is off
    // (DGR_CPU_CULL=0: all scalar, which the tests compare with)
    int colour_case;
    static constexpr int kScalarPass2 = -2;
};

template <bool ANTIALIASING>
DGR_INLINE void gaussians_backward_case(const Pass2Args& a, int first, int n, const BlockGrads& sums,
                                        const int* drawn, int* visible, const float (*sh_in)[LANE_ROW],
                                        float (*sh_lanes)[LANE_ROW]) {
    auto run = [&](auto degree) {
        gaussians_backward_block<ANTIALIASING, decltype(degree)::value>(a.in, a.cam, a.grid, first, n, sums, drawn,
                                                                      visible, a.out, sh_in, sh_lanes);
    };
    switch (a.colour_case) {
        case -1: run(std::integral_constant<int, -1>()); break;
        case 0: run(std::integral_constant<int, 0>()); break;
        case 1: run(std::integral_constant<int, 1>()); break;
        case 2: run(std::integral_constant<int, 2>()); break;
        default: run(std::integral_constant<int, 3>()); break;
    }
}

// The backward's pass 2 over Gaussians [begin, end): each one's entries
// summed in slot order (deterministic for any thread count), then chained
// back through the preprocess; zeros for the Gaussians not drawn (of the
// given inputs only).
DGR_MULTIVERSION void backward_preprocess_range(const Pass2Args& a, int64_t begin, int64_t end) {
    const dgr::GaussianInputs& in = a.in;
    const dgr::GaussianGrads& out = a.out;
    const bool vectorised = a.colour_case != Pass2Args::kScalarPass2;
    BlockGrads sums;
    float sh_in[SH_ENTRIES][LANE_ROW];  // (the SH cases: the coefficients and their gradients, by lane)
    float sh_lanes[SH_ENTRIES][LANE_ROW];
    int drawn[PREPROCESS_BLOCK], visible[PREPROCESS_BLOCK];
    for (int64_t b = begin; b < end; b += PREPROCESS_BLOCK) {
        const int n = int(std::min<int64_t>(PREPROCESS_BLOCK, end - b));
        const int first = int(b);
        // (blocks off screen or behind the camera, often whole ones, skip to the zeros)
        bool any_touched = false;
        for (int j = 0; j < n; ++j) {
            visible[j] = 0;
            any_touched = any_touched || a.touched[first + j] != 0;
        }
        bool any_drawn = false;
        for (int j = 0; j < n && any_touched; ++j) {
            const int64_t i = first + j;
            // (the SH row of a Gaussian drawn a few ahead prefetched: 192 bytes
            // that attributes_finite and the copy below read at scattered
            // Gaussians; garden-x3 with degree-3 SH: pass 2 27.2 -> 25.8 ms)
            if (a.colour_case >= 0 && j + 4 < n && a.touched[i + 4] != 0)
                prefetch_sh_row(in.shs + (i + 4) * SH_ENTRIES, SH_ENTRIES);
            dgr::SplatGrad sum;
            std::memset(&sum, 0, sizeof(sum));
            drawn[j] = 0;
            if (a.touched[i] != 0)
                for (int64_t k = a.offsets[i]; k < a.offsets[i + 1]; ++k) add_splat_grad(sum, a.slot_grads[k]);
            const float* from = reinterpret_cast<const float*>(&sum);
            for (int k = 0; k < dgr::SPLAT_GRAD_FLOATS; ++k) sums.field[k][j] = from[k];
            if (vectorised && a.touched[i] != 0) {
                drawn[j] = dgr::attributes_finite(in, int(i)) ? 1 : 0;
                any_drawn = any_drawn || drawn[j] != 0;
            }
            if (a.colour_case >= 0)  // (the lanes not drawn: zeros, any finite value would do)
                for (int e = 0; e < SH_ENTRIES; ++e) sh_in[e][j] = drawn[j] != 0 ? in.shs[i * SH_ENTRIES + e] : 0.f;
            if (!vectorised && a.touched[i] != 0)
                visible[j] = dgr::preprocess_gaussian_backward(int(i), in, a.cam, a.grid.grid_x, a.grid.grid_y,
                                                               sum, out);
        }
        if (any_drawn) {
            if (in.antialiasing)
                gaussians_backward_case<true>(a, first, n, sums, drawn, visible, sh_in, sh_lanes);
            else
                gaussians_backward_case<false>(a, first, n, sums, drawn, visible, sh_in, sh_lanes);
        }
        for (int j = 0; j < n; ++j) {
            if (visible[j] != 0) continue;
            const int64_t i = first + j;
            std::fill_n(out.means3D + 3 * i, 3, 0.f);
            std::fill_n(out.means2D + 3 * i, 3, 0.f);
            out.opacities[i] = 0.f;
            out.importances[i] = 0.f;
            if (out.colors_precomp != nullptr) std::fill_n(out.colors_precomp + 3 * i, 3, 0.f);
            if (out.shs != nullptr) std::fill_n(out.shs + 3 * a.sh_rows * i, 3 * a.sh_rows, 0.f);
            if (out.cov3D_precomp != nullptr) std::fill_n(out.cov3D_precomp + 6 * i, 6, 0.f);
            if (out.scales != nullptr) std::fill_n(out.scales + 3 * i, 3, 0.f);
            if (out.rotations != nullptr) std::fill_n(out.rotations + 4 * i, 4, 0.f);
        }
    }
}

}  // namespace

std::vector<torch::Tensor> rasterize_forward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    int64_t image_height, int64_t image_width, const torch::Tensor& shs, int64_t sh_degree,
    const torch::Tensor& campos, bool antialiasing, bool compute_stats, const torch::Tensor& pixel_weights) {
    PhaseClock clock(forward_phases);
    const dgr::checks::Sizes sizes = dgr::checks::check_forward_args(
        "rasterize_forward_cpu", dgr::checks::Backend::CPU, background, means3D, colors_precomp, opacities,
        importances, scales, rotations, cov3D_precomp, viewmatrix, projmatrix, image_height, image_width, shs,
        sh_degree, campos, pixel_weights);
    const int64_t P = sizes.P;
    const int64_t H = sizes.H, W = sizes.W;
    const dgr::Camera cam = make_camera(viewmatrix, projmatrix, campos, tan_fovx, tan_fovy, H, W);
    const dgr::GaussianInputs in =
        gaussian_inputs(means3D, scales, rotations, cov3D_precomp, shs, colors_precomp, opacities, importances, sh_degree, scale_modifier,
                        antialiasing);
    const TileGrid grid = make_grid(H, W);

    // Every tensor the forward makes comes from the PoolAllocator. Not
    // zeroed here: the preprocess loop writes every radius (0 for the culled
    // Gaussians), in parallel; and the record of every drawn Gaussian (the
    // others are never read).
    torch::Tensor radii = pooled_empty({P}, torch::kInt32);
    torch::Tensor tile_rects = pooled_empty({P, 4}, torch::kInt32);
    torch::Tensor tiles_touched = pooled_empty({P}, torch::kInt32);
    torch::Tensor splat_records = pooled_empty({P, dgr::checks::SPLAT_RECORD_FLOATS}, torch::kFloat32);
    static_assert(sizeof(SplatRecord) == dgr::checks::SPLAT_RECORD_FLOATS * sizeof(float), "the state's records");
    SplatRecord* records = reinterpret_cast<SplatRecord*>(splat_records.data_ptr<float>());
    // The projected Gaussians' other fields (means2D, depths, conic_opacity,
    // colors) go straight into the records; the scalar preprocess, which
    // writes them all (preprocess_gaussian), gets arrays for them.
    const bool scalar_preprocess = !culling_enabled();
    const int64_t scalar_P = scalar_preprocess || in.cov3D_precomp != nullptr ? P : 0;
    const ScratchArray<float> means2D(2 * scalar_P, "rasterize_forward_cpu: means2D", false),
        depths(scalar_P, "rasterize_forward_cpu: depths", false),
        conic_opacity(4 * scalar_P, "rasterize_forward_cpu: conic_opacity", false),
        colors(3 * scalar_P, "rasterize_forward_cpu: colors", false);
    dgr::ProjectedGaussians proj{radii.data_ptr<int>(), means2D.get(),        depths.get(),
                                 conic_opacity.get(),   colors.get(),         tile_rects.data_ptr<int>(),
                                 tiles_touched.data_ptr<int>()};
    const dgr::SplatSource src{means2D.get(), conic_opacity.get(), colors.get(), importances.data_ptr<float>(),
                               depths.get()};
    VisibleRuns runs(P);
    clock.mark("setup");  // (the argument checks, the state's tensors)
    parallel_for_chunks(P, VisibleRuns::CHUNK, [&](int64_t begin, int64_t end) {
        preprocess_range(in, cam, grid, proj, src, records, runs, begin, end, scalar_preprocess);
    });
    clock.mark("preprocess");

    Binning bins = bin_gaussians(runs, tile_rects, tiles_touched, grid);
    clock.mark("binning");

    torch::Tensor out_color = pooled_empty({3, H, W}, torch::kFloat32);
    torch::Tensor out_importance = pooled_empty({H, W}, torch::kFloat32);
    torch::Tensor out_invdepth = pooled_empty({1, H, W}, torch::kFloat32);
    torch::Tensor final_T = pooled_empty({H, W}, torch::kFloat32);
    torch::Tensor out_alpha = pooled_empty({1, H, W}, torch::kFloat32);  // (written by the tiles)
    torch::Tensor n_contrib = pooled_empty({H, W}, torch::kInt32);
    float* color_px = out_color.data_ptr<float>();
    float* importance_px = out_importance.data_ptr<float>();
    float* invdepth_px = out_invdepth.data_ptr<float>();
    float* final_T_px = final_T.data_ptr<float>();
    int* n_contrib_px = n_contrib.data_ptr<int>();
    const float* bg = background.data_ptr<float>();
    const int64_t* ranges = bins.tile_ranges.data_ptr<int64_t>();
    const int32_t* points = bins.point_list.data_ptr<int32_t>();

    // Statistics go per (Gaussian, tile) entry, owned by one tile: race free.
    const int64_t num_entries = bins.point_list.size(0);
    // Zeroed: tiles write only the entries some pixel blended.
    ScratchArray<dgr::SplatStats> slot_stats;
    if (compute_stats) slot_stats = ScratchArray<dgr::SplatStats>(num_entries, "rasterize_forward_cpu: statistics", true);

    ForwardArgs args;
    args.frame = Frame{H, W, grid};
    args.records = records;
    args.ranges = ranges;
    args.points = points;
    args.gaussian_offsets = bins.gaussian_offsets.data_ptr<int64_t>();
    args.num_entries = num_entries;
    args.bg = bg;
    args.cull = culling_enabled();
    args.color = color_px;
    args.importance = importance_px;
    args.invdepth = invdepth_px;
    args.final_T = final_T_px;
    args.alpha = out_alpha.data_ptr<float>();
    args.n_contrib = n_contrib_px;
    args.slot_stats = slot_stats.get();
    args.pixel_weight = compute_stats ? ptr_or_null<float>(pixel_weights) : nullptr;
    clock.mark("outputs");  // (and the statistics' entries zeroed)
    parallel_for_dynamic(grid.num_tiles(), [&](int64_t tile) { forward_tile(args, tile); });
    clock.mark("tiles");

    const ForwardState st{splat_records,   tiles_touched, bins.gaussian_offsets, bins.tile_ranges,
                          bins.point_list, final_T,       n_contrib};
    std::vector<torch::Tensor> result = {out_color, out_importance, radii, out_invdepth, out_alpha};
    for (const torch::Tensor& t : st.to_vector()) result.push_back(t);

    // Per-Gaussian statistics: its entries in slot order (deterministic).
    const int64_t stats_P = compute_stats ? P : 0;
    // (written whole below)
    torch::Tensor accum_weight = pooled_empty({stats_P}, torch::kFloat32);
    torch::Tensor max_weight = pooled_empty({stats_P}, torch::kFloat32);
    torch::Tensor hit_count = pooled_empty({stats_P}, torch::kInt32), top_count = pooled_empty({stats_P}, torch::kInt32);
    if (compute_stats) {
        const int64_t* offsets = bins.gaussian_offsets.data_ptr<int64_t>();
        float* accum = accum_weight.data_ptr<float>();
        float* maxw = max_weight.data_ptr<float>();
        int* hits = hit_count.data_ptr<int>();
        int* tops = top_count.data_ptr<int>();
        // Per chunk of the preprocess: zeros for all (a Gaussian with no
        // entries sums to zero), then the sums of the ones with entries,
        // which its run lists. (A loop over every Gaussian, branching on
        // each one's entry count, took 4.5 ms on garden-x3's million, 70%
        // of them without entries; this, 4.0 ms: benchmarks/RESULTS.md.)
        parallel_for_chunks(P, VisibleRuns::CHUNK, [&](int64_t begin, int64_t end) {
            std::fill(accum + begin, accum + end, 0.f);
            std::fill(maxw + begin, maxw + end, 0.f);
            std::fill(hits + begin, hits + end, 0);
            std::fill(tops + begin, tops + end, 0);
            const uint64_t* items = runs.items.get() + begin;
            const int64_t found = runs.found[size_t(begin / VisibleRuns::CHUNK)];
            for (int64_t v = 0; v < found; ++v) {
                const int64_t i = VisibleRuns::gaussian_of(items[v]);
                dgr::SplatStats sum{0.f, 0.f, 0, 0};
                for (int64_t k = offsets[i]; k < offsets[i + 1]; ++k) dgr::merge_stats(sum, slot_stats[k]);
                accum[i] = sum.accum_weight;
                maxw[i] = sum.max_weight;
                hits[i] = sum.hit_count;
                tops[i] = sum.top_count;
            }
        });
    }
    for (const torch::Tensor& t : {accum_weight, hit_count, max_weight, top_count}) result.push_back(t);
    clock.mark("statistics");
    return result;
}

std::vector<torch::Tensor> rasterize_backward_cpu(
    const torch::Tensor& background, const torch::Tensor& means3D, const torch::Tensor& colors_precomp,
    const torch::Tensor& opacities, const torch::Tensor& importances, const torch::Tensor& scales,
    const torch::Tensor& rotations, double scale_modifier, const torch::Tensor& cov3D_precomp,
    const torch::Tensor& viewmatrix, const torch::Tensor& projmatrix, double tan_fovx, double tan_fovy,
    const torch::Tensor& shs, int64_t sh_degree, const torch::Tensor& campos, const std::vector<torch::Tensor>& state,
    bool antialiasing, const torch::Tensor& dL_dcolor, const torch::Tensor& dL_dimportance,
    const torch::Tensor& dL_dinvdepth, const torch::Tensor& dL_dalpha) {
    PhaseClock clock(backward_phases);
    const dgr::checks::Sizes sizes = dgr::checks::check_backward_args(
        "rasterize_backward_cpu", dgr::checks::Backend::CPU, background, means3D, colors_precomp, opacities,
        importances, scales, rotations, cov3D_precomp, viewmatrix, projmatrix, shs, sh_degree, campos, state,
        dL_dcolor, dL_dimportance, dL_dinvdepth, dL_dalpha);
    const ForwardState st = ForwardState::from_vector(state);
    const int64_t P = sizes.P;
    const int64_t H = sizes.H, W = sizes.W;
    const dgr::Camera cam = make_camera(viewmatrix, projmatrix, campos, tan_fovx, tan_fovy, H, W);
    const dgr::GaussianInputs in =
        gaussian_inputs(means3D, scales, rotations, cov3D_precomp, shs, colors_precomp, opacities, importances, sh_degree, scale_modifier,
                        antialiasing);
    const TileGrid grid = make_grid(H, W);

    // Pass 1, per tile: each pixel walks its splats back to front; the
    // gradient of entry e (owned by its tile alone) goes to slot_grads at the
    // slot of e, so that pass 2 reads each Gaussian's entries contiguously.
    const int64_t num_entries = st.point_list.size(0);
    const int64_t* offsets = st.gaussian_offsets.data_ptr<int64_t>();
    check_splat_records(st.records(), st.tiles_touched.data_ptr<int>(), offsets, P, grid);
    clock.mark("checks");
    // (not zeroed: every tile writes all of its entries)
    const ScratchArray<dgr::SplatGrad> slot_grads(num_entries, "rasterize_backward_cpu: gradients", false);
    std::atomic<bool> records_mismatch{false};
    BackwardArgs args;
    args.frame = Frame{H, W, grid};
    args.records = st.records();
    args.ranges = st.tile_ranges.data_ptr<int64_t>();
    args.points = st.point_list.data_ptr<int32_t>();
    args.gaussian_offsets = offsets;
    args.num_entries = num_entries;
    args.bg = background.data_ptr<float>();
    args.cull = culling_enabled();
    args.final_T = st.final_T.data_ptr<float>();
    args.n_contrib = st.n_contrib.data_ptr<int>();
    args.dL_dcolor = dL_dcolor.data_ptr<float>();
    args.dL_dimportance = dL_dimportance.data_ptr<float>();
    args.dL_dinvdepth = dL_dinvdepth.data_ptr<float>();
    args.dL_dalpha = dL_dalpha.data_ptr<float>();
    args.half_w = 0.5f * float(W);
    args.half_h = 0.5f * float(H);
    args.slot_grads = slot_grads.get();
    args.records_mismatch = &records_mismatch;
    parallel_for_dynamic(grid.num_tiles(), [&](int64_t tile) { backward_tile(args, tile); });
    TORCH_CHECK(!records_mismatch.load(), "rasterize_backward_cpu: state.point_list: expected each tile's list "
                "to name Gaussians whose records' rectangles hold the tile (as the forward binned them), got others");
    clock.mark("tiles");

    // Pass 2, per Gaussian: sum its entries in slot order (deterministic for
    // any thread count) and chain back through the preprocess.
    // Not zeroed here: the loop below writes every row of the given inputs'
    // gradients, in parallel (zeros for culled Gaussians).
    const int64_t sh_rows = std::max<int64_t>(in.sh_coeffs, 1);
    torch::Tensor g_means3D = pooled_empty({P, 3}, torch::kFloat32);
    torch::Tensor g_means2D = pooled_empty({P, 3}, torch::kFloat32);
    torch::Tensor g_opacities = pooled_empty({P}, torch::kFloat32);
    torch::Tensor g_importances = pooled_empty({P}, torch::kFloat32);
    // which inputs were given: preprocess_gaussian_backward writes their
    // gradients for a visible Gaussian and never touches the others'
    const bool colors_given = in.colors_precomp != nullptr, cov3D_given = in.cov3D_precomp != nullptr;
    // The gradient of an input that was not given is zero everywhere: a
    // read-only zero row expanded to the shape, instead of P rows written
    // (36 MB on garden-x3, which the Python layer then drops).
    auto gradient = [P](bool given, std::vector<int64_t> shape) {
        if (given) return pooled_empty(shape, torch::kFloat32);
        shape[0] = 1;
        torch::Tensor row = torch::zeros(shape, torch::kFloat32);
        shape[0] = P;
        return row.expand(shape);
    };
    torch::Tensor g_colors = gradient(colors_given, {P, 3});
    torch::Tensor g_shs = gradient(!colors_given, {P, sh_rows, 3});
    torch::Tensor g_cov3D = gradient(cov3D_given, {P, 6});
    torch::Tensor g_scales = gradient(!cov3D_given, {P, 3});
    torch::Tensor g_rotations = gradient(!cov3D_given, {P, 4});
    auto written = [](bool given, torch::Tensor& t) { return given ? t.data_ptr<float>() : nullptr; };
    const dgr::GaussianGrads out{g_means3D.data_ptr<float>(),
                                 g_means2D.data_ptr<float>(),
                                 g_opacities.data_ptr<float>(),
                                 g_importances.data_ptr<float>(),
                                 written(colors_given, g_colors),
                                 written(!colors_given, g_shs),
                                 written(cov3D_given, g_cov3D),
                                 written(!cov3D_given, g_scales),
                                 written(!cov3D_given, g_rotations)};
    int colour_case = Pass2Args::kScalarPass2;
    if (!cov3D_given && culling_enabled()) {
        const int sh_degree = vectorised_sh_degree(in);
        if (colors_given)
            colour_case = -1;
        else if (sh_degree >= 0)
            colour_case = sh_degree;
    }
    const Pass2Args pass2{in,     cam,      grid,   st.tiles_touched.data_ptr<int>(), offsets, slot_grads.get(),
                          out,    sh_rows,  colour_case};
    parallel_for_chunks(P, 2048, [&](int64_t begin, int64_t end) {  // (visible Gaussians cost more)
        backward_preprocess_range(pass2, begin, end);
    });
    clock.mark("pass 2");
    return {g_means3D, g_means2D, g_opacities, g_importances, g_colors, g_shs, g_cov3D, g_scales, g_rotations};
}

void release_scratch_cpu() { ScratchPool::instance().release(); }

std::vector<std::pair<std::string, double>> cpu_phase_times(bool backward) {
    return backward ? backward_phases : forward_phases;
}

torch::Tensor mark_visible_cpu(const torch::Tensor& means3D, const torch::Tensor& viewmatrix,
                               const torch::Tensor& projmatrix) {
    const int64_t P =
        dgr::checks::check_mark_visible_args("mark_visible_cpu", dgr::checks::Backend::CPU, means3D, viewmatrix,
                                             projmatrix);
    torch::Tensor visible = torch::zeros({P}, torch::kBool);
    const float* m = means3D.data_ptr<float>();
    const float* view = viewmatrix.data_ptr<float>();
    bool* out = visible.data_ptr<bool>();
    at::parallel_for(0, P, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
            out[i] = dgr::in_front_of_near_plane(
                dgr::transform_point_4x3(glm::vec3(m[3 * i], m[3 * i + 1], m[3 * i + 2]), view));
    });
    return visible;
}
