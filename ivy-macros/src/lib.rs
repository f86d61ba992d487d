//! The `#[task]` attribute of Ivy. Use it as `ivy::task`; this crate is an implementation
//! detail of the `ivy` facade.
//!
//! It parses the options (`args.rs`), checks the function (`validate.rs`) and emits the function
//! unchanged plus a same-named type that implements `Task` (`expand.rs`). Generated code names
//! only `::ivy::__private` paths (or the `crate = "…"` override) and `::core`.

mod args;
mod expand;
mod validate;

use proc_macro::TokenStream;

/// Turns an `async fn` into a task that producers call by name through a broker and workers run.
///
/// See the `ivy` crate for the options and an example.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.clone().into();
    match expand::task(attr.into(), item2.clone()) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            // Still emit the function so the rest of the crate (and the IDE) keeps working.
            let mut out = err.into_compile_error();
            out.extend(item2);
            out.into()
        }
    }
}
