//! The libc functions we interpose, looked up once with `dlsym(RTLD_NEXT, ...)`.

use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

fn lookup(cache: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let p = cache.load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds the next definition after us.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if f == 0 {
        // Without the real function nothing can work: fail loudly rather than recurse.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("bpfipt: dlsym({name:?}) failed; cannot continue\n").as_bytes(),
        );
        std::process::abort();
    }
    cache.store(f, Ordering::Release);
    f
}

macro_rules! real_fn {
    ($name:ident, $sym:literal, fn($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            static CACHE: AtomicUsize = AtomicUsize::new(0);
            let f = lookup(&CACHE, $sym);
            // SAFETY: `f` is the libc function of this exact signature.
            unsafe {
                let f: unsafe extern "C" fn($($ty),*) -> $ret = std::mem::transmute(f);
                f($($arg),*)
            }
        }
    };
}

real_fn!(
    socket,
    c"socket",
    fn(domain: c_int, ty: c_int, protocol: c_int) -> c_int
);
real_fn!(close, c"close", fn(fd: c_int) -> c_int);
real_fn!(
    getsockopt,
    c"getsockopt",
    fn(
        fd: c_int,
        level: c_int,
        optname: c_int,
        optval: *mut c_void,
        optlen: *mut libc::socklen_t,
    ) -> c_int
);
real_fn!(
    setsockopt,
    c"setsockopt",
    fn(
        fd: c_int,
        level: c_int,
        optname: c_int,
        optval: *const c_void,
        optlen: libc::socklen_t,
    ) -> c_int
);
real_fn!(
    fopen,
    c"fopen",
    fn(path: *const c_char, mode: *const c_char) -> *mut libc::FILE
);
real_fn!(
    fopen64,
    c"fopen64",
    fn(path: *const c_char, mode: *const c_char) -> *mut libc::FILE
);
