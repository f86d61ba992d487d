//! Checks that the function can be a task, with an error at the offending span for each
//! problem (all of them at once, merged).

use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, ReturnType, Type};

use crate::args::TaskArgs;

/// One parameter of the task: its name and type.
pub struct Param<'a> {
    pub ident: &'a syn::Ident,
    pub ty: &'a Type,
    /// A `State<T>`: filled from the worker, not sent with the call.
    pub state: bool,
}

/// Whether `ty` is spelled `State<..>` (`ivy::State<T>`, however imported): such a parameter
/// is filled from the worker's state. Another type named `State` fails to compile at the
/// generated `FromWorker` bound, with a message that says so.
fn is_state(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) if tp.qself.is_none() => tp.path.segments.last().is_some_and(|s| {
            s.ident == "State" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
        }),
        Type::Group(g) => is_state(&g.elem),
        Type::Paren(p) => is_state(&p.elem),
        _ => false,
    }
}

pub fn check<'a>(func: &'a ItemFn, args: &TaskArgs) -> syn::Result<Vec<Param<'a>>> {
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let sig = &func.sig;

    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        push(syn::Error::new(
            sig.generics.span(),
            "a task cannot be generic: the worker must know the concrete argument types",
        ));
    }
    match (&sig.asyncness, &args.blocking) {
        (None, None) => push(syn::Error::new(
            sig.fn_token.span,
            "a task must be an `async fn`; add `#[task(blocking)]` to run a plain fn on the blocking thread pool",
        )),
        (Some(a), Some(_)) => push(syn::Error::new(
            a.span,
            "`blocking` is for plain functions; remove `async` or the `blocking` option",
        )),
        _ => {}
    }
    if let Some(c) = &sig.constness {
        push(syn::Error::new(c.span, "a task cannot be a `const fn`"));
    }
    if let Some(u) = &sig.unsafety {
        push(syn::Error::new(u.span, "a task cannot be an `unsafe fn`"));
    }
    if let Some(abi) = &sig.abi {
        push(syn::Error::new(
            abi.span(),
            "a task cannot have an `extern` ABI",
        ));
    }
    if let Some(v) = &sig.variadic {
        push(syn::Error::new(v.span(), "a task cannot be variadic"));
    }

    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => push(syn::Error::new(
                r.span(),
                "a task cannot take `self`: make it a free function and pass what it needs as arguments",
            )),
            FnArg::Typed(pt) => {
                let ident = match &*pt.pat {
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => Some(&pi.ident),
                    other => {
                        push(syn::Error::new(
                            other.span(),
                            "task arguments must be plain names (`x: T`): patterns cannot be sent by name",
                        ));
                        None
                    }
                };
                check_type(&pt.ty, &mut push);
                if let Some(ident) = ident {
                    params.push(Param {
                        ident,
                        ty: &pt.ty,
                        state: is_state(&pt.ty),
                    });
                }
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        check_type(ty, &mut push);
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(params),
    }
}

/// Types that cannot travel: borrowed ones and `impl Trait`.
fn check_type(ty: &Type, push: &mut impl FnMut(syn::Error)) {
    match ty {
        Type::Reference(r) => push(syn::Error::new(
            r.span(),
            "task arguments and results travel as JSON and must be owned: use `String` for `&str`, `Vec<T>` for `&[T]`",
        )),
        Type::ImplTrait(i) => push(syn::Error::new(
            i.span(),
            "`impl Trait` makes the task generic; name a concrete type",
        )),
        Type::Paren(p) => check_type(&p.elem, push),
        Type::Group(g) => check_type(&g.elem, push),
        _ => {}
    }
}
