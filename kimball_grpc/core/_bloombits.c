/* The Bloom filters' bit positions, tested and set in C (kimball_grpc/core/bloom.py).
 *
 * Why C: each event tests and sets ten bits in two or three filters, and the same loops
 * in Python cost about ten times rbloom's (a Rust Bloom filter) for the same work. The
 * positions are exactly those bloom.py's docstring describes, so filters written before
 * this module existed answer the same and snapshots keep their bytes:
 *
 *   key hash: 16 bytes, MurmurHash3 x64-128 of the key; words[0..3] its four
 *   little-endian 32-bit words, high its second little-endian 64-bit half;
 *   positions 0..min(k, 4)-1: words[i] % m;
 *   in a slice of more than SMALL_SLICE_BITS bits, positions 4..k-1:
 *       (words[0] + i * (high % m)) % m;
 *   in a smaller slice, positions 4..k-1: words[i] % m, where words 4j..4j+3 are those
 *   of MurmurHash3 x64-128 of the key hash with seed j.
 *
 * A slice is (array, bits, hashes): a writable bitarray of big-endian bit order (bit i
 * is bit 7 - i % 8 of byte i / 8) holding at least ``bits`` bits, read and written in
 * place through the buffer protocol. Every wrong input raises a Python exception.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SMALL_SLICE_BITS (UINT64_C(1) << 16)
#define MAX_SLICE_BITS (UINT64_C(1) << 32)
#define DIGEST_SIZE 16
/* The most positions per key (bloom.py's MAX_HASHES): bounds the work of one call. */
#define MAX_HASHES 4096

/* -- MurmurHash3 x64-128 of a 16-byte key (Austin Appleby's, public domain) ----- */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= UINT64_C(0xff51afd7ed558ccd);
    k ^= k >> 33;
    k *= UINT64_C(0xc4ceb9fe1a85ec53);
    k ^= k >> 33;
    return k;
}

static inline uint64_t load64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline uint32_t load32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* MurmurHash3 x64-128 of exactly one 16-byte block (no tail), as its four 32-bit words. */
static void murmur_words(const unsigned char *key, uint32_t seed, uint32_t out[4]) {
    const uint64_t c1 = UINT64_C(0x87c37b91114253d5), c2 = UINT64_C(0x4cf5ad432745937f);
    uint64_t h1 = seed, h2 = seed;
    uint64_t k1 = load64(key), k2 = load64(key + 8);
    k1 *= c1; k1 = rotl64(k1, 31); k1 *= c2; h1 ^= k1;
    h1 = rotl64(h1, 27); h1 += h2; h1 = h1 * 5 + 0x52dce729;
    k2 *= c2; k2 = rotl64(k2, 33); k2 *= c1; h2 ^= k2;
    h2 = rotl64(h2, 31); h2 += h1; h2 = h2 * 5 + 0x38495ab5;
    h1 ^= DIGEST_SIZE; h2 ^= DIGEST_SIZE;
    h1 += h2; h2 += h1;
    h1 = fmix64(h1); h2 = fmix64(h2);
    h1 += h2; h2 += h1;
    out[0] = (uint32_t)h1; out[1] = (uint32_t)(h1 >> 32);
    out[2] = (uint32_t)h2; out[3] = (uint32_t)(h2 >> 32);
}

/* -- positions ------------------------------------------------------------------ */

/* Walks a key's positions in one slice: position(i) for i = 0, 1, ... in order. */
typedef struct {
    const unsigned char *digest;
    uint64_t m;
    uint32_t words[4];   /* words 4*block .. 4*block+3, from a small slice's stretch */
    uint64_t block;      /* 0: none computed yet (block 0 is the digest's own words) */
    int stepping;        /* double hashing started (a large slice, from position 4 on) */
    uint64_t step, next;
} Positions;

static inline void positions_init(Positions *p, const unsigned char *digest, uint64_t m) {
    p->digest = digest;
    p->m = m;
    p->block = 0;
    p->stepping = 0;
}

/* Position i; called with i = 0, 1, 2, ... in order. */
static inline uint64_t position(Positions *p, uint64_t i) {
    uint64_t m = p->m;
    if (i < 4) return load32(p->digest + 4 * i) % m;
    if (m > SMALL_SLICE_BITS) {
        if (!p->stepping) {
            /* (words[0] + i * high) % m, with high reduced first: step < 2**32 and
             * i <= MAX_HASHES, so nothing overflows. */
            p->stepping = 1;
            p->step = load64(p->digest + 8) % m;
            p->next = (load32(p->digest) + i * p->step) % m;
        } else {
            p->next += p->step;
            if (p->next >= m) p->next -= m;
        }
        return p->next;
    }
    uint64_t block = i / 4;
    if (block != p->block) {
        /* The stretch's seed is the block's number (far below 2**32: k is small). */
        murmur_words(p->digest, (uint32_t)block, p->words);
        p->block = block;
    }
    return p->words[i % 4] % m;
}

/* -- argument checks ------------------------------------------------------------ */

typedef struct {
    Py_buffer view;
    uint64_t bits;
    uint64_t hashes;
} Slice;

/* ``*out`` = the int ``value`` if it is 1 to ``most``; else raises and returns -1. */
static int count_of(PyObject *value, uint64_t most, const char *what, uint64_t *out) {
    if (!PyLong_Check(value)) {
        PyErr_Format(PyExc_TypeError, "a slice's %s is an int", what);
        return -1;
    }
    uint64_t n = PyLong_AsUnsignedLongLong(value);
    if (n == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear(); /* negative or past 64 bits: out of range below */
        n = 0;
    }
    if (n == 0 || n > most) {
        PyErr_Format(PyExc_ValueError, "a slice's %s is 1 to %llu", what, (unsigned long long)most);
        return -1;
    }
    *out = n;
    return 0;
}

/* Fills ``s`` from (array, bits, hashes); on error raises and returns -1 (nothing held). */
static int slice_open(Slice *s, PyObject *array, PyObject *bits, PyObject *hashes) {
    if (count_of(bits, MAX_SLICE_BITS, "bits", &s->bits) < 0 ||
        count_of(hashes, MAX_HASHES, "hashes", &s->hashes) < 0)
        return -1;
    if (PyObject_GetBuffer(array, &s->view, PyBUF_WRITABLE) < 0) return -1;
    if ((uint64_t)s->view.len < (s->bits + 7) / 8) {
        PyErr_Format(PyExc_ValueError, "a slice of %llu bits needs %llu bytes, its array has %zd",
                     (unsigned long long)s->bits, (unsigned long long)((s->bits + 7) / 8),
                     s->view.len);
        PyBuffer_Release(&s->view);
        return -1;
    }
    return 0;
}

/* A slice from a (array, bits, hashes) tuple. */
static int slice_open_tuple(Slice *s, PyObject *item) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 3) {
        PyErr_SetString(PyExc_TypeError, "each slice is a tuple (array, bits, hashes, ...)");
        return -1;
    }
    return slice_open(s, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1),
                      PyTuple_GET_ITEM(item, 2));
}

static const unsigned char *digest_of(PyObject *digest) {
    if (!PyBytes_Check(digest) || PyBytes_GET_SIZE(digest) != DIGEST_SIZE) {
        PyErr_SetString(PyExc_TypeError, "a key hash is 16 bytes");
        return NULL;
    }
    return (const unsigned char *)PyBytes_AS_STRING(digest);
}

/* The digest of a call (slices or slice, digest); NULL with an exception if the call is
 * wrong. */
static const unsigned char *digest_arg(const char *call, PyObject *const *args,
                                       Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s takes 2 arguments, not %zd", call, nargs);
        return NULL;
    }
    return digest_of(args[1]);
}

/* -- the operations ------------------------------------------------------------- */

static inline int slice_contains(const Slice *s, const unsigned char *digest) {
    const unsigned char *bytes = s->view.buf;
    Positions p;
    positions_init(&p, digest, s->bits);
    for (uint64_t i = 0; i < s->hashes; i++) {
        uint64_t at = position(&p, i);
        if (!(bytes[at >> 3] & (0x80 >> (at & 7)))) return 0;
    }
    return 1;
}

static inline void slice_add(const Slice *s, const unsigned char *digest) {
    unsigned char *bytes = s->view.buf;
    Positions p;
    positions_init(&p, digest, s->bits);
    for (uint64_t i = 0; i < s->hashes; i++) {
        uint64_t at = position(&p, i);
        bytes[at >> 3] |= (unsigned char)(0x80 >> (at & 7));
    }
}

PyDoc_STRVAR(contains_doc,
"contains(slices, digest) -> bool\n\n"
"Whether any of ``slices`` (a list of (array, bits, hashes, ...) tuples, in the order to\n"
"test them) has every position of the 16-byte key hash ``digest`` set.");

/* Whether any slice of the list holds every position: 1 or 0, -1 with an exception. */
static int contains_any(PyObject *slices, const unsigned char *digest) {
    for (Py_ssize_t n = 0; n < PyList_GET_SIZE(slices); n++) {
        Slice s;
        if (slice_open_tuple(&s, PyList_GET_ITEM(slices, n)) < 0) return -1;
        int found = slice_contains(&s, digest);
        PyBuffer_Release(&s.view);
        if (found) return 1;
    }
    return 0;
}

static PyObject *bloombits_contains(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *digest = digest_arg("contains(slices, digest)", args, nargs);
    if (digest == NULL) return NULL;
    if (!PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "slices is a list");
        return NULL;
    }
    int found = contains_any(args[0], digest);
    if (found < 0) return NULL;
    return PyBool_FromLong(found);
}

PyDoc_STRVAR(add_doc,
"add(slice, digest) -> None\n\n"
"Set every position of the 16-byte key hash ``digest`` in ``slice`` (an (array, bits,\n"
"hashes, ...) tuple).");

static PyObject *bloombits_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *digest = digest_arg("add(slice, digest)", args, nargs);
    if (digest == NULL) return NULL;
    Slice s;
    if (slice_open_tuple(&s, args[0]) < 0) return NULL;
    slice_add(&s, digest);
    PyBuffer_Release(&s.view);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(insert_doc,
"insert(slices, digest) -> bool\n\n"
"``add(slices[0], digest)`` unless ``contains(slices, digest)``; whether it added.");

static PyObject *bloombits_insert(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    const unsigned char *digest = digest_arg("insert(slices, digest)", args, nargs);
    if (digest == NULL) return NULL;
    PyObject *slices = args[0];
    if (!PyList_Check(slices) || PyList_GET_SIZE(slices) == 0) {
        PyErr_SetString(PyExc_TypeError, "slices is a list of at least one slice");
        return NULL;
    }
    Slice s;
    /* The slice to add to is checked before anything is tested: an error changes nothing. */
    if (slice_open_tuple(&s, PyList_GET_ITEM(slices, 0)) < 0) return NULL;
    int found = contains_any(slices, digest);
    if (found == 0) slice_add(&s, digest);
    PyBuffer_Release(&s.view);
    if (found < 0) return NULL;
    if (found) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

static PyMethodDef bloombits_methods[] = {
    {"contains", (PyCFunction)(void (*)(void))bloombits_contains, METH_FASTCALL, contains_doc},
    {"add", (PyCFunction)(void (*)(void))bloombits_add, METH_FASTCALL, add_doc},
    {"insert", (PyCFunction)(void (*)(void))bloombits_insert, METH_FASTCALL, insert_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bloombits_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kimball_grpc.core._bloombits",
    .m_doc = "Bloom filter bit positions tested and set in place (see bloom.py).",
    .m_size = -1,
    .m_methods = bloombits_methods,
};

PyMODINIT_FUNC PyInit__bloombits(void) { return PyModule_Create(&bloombits_module); }
