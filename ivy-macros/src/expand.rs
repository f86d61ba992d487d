//! Code generation: the function stays as written; beside it, a type with the function's name
//! (in the type namespace only) that builds calls and implements `Task`.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemFn, ReturnType, Type};

use crate::args::TaskArgs;
use crate::validate;

pub fn task(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let func: ItemFn = syn::parse2(item)?;
    // Parse errors of the options and of the function are reported together.
    let parsed = TaskArgs::parse(attr);
    let fallback = TaskArgs::default();
    let checked = validate::check(&func, parsed.as_ref().unwrap_or(&fallback));
    let (args, params) = match (parsed, checked) {
        (Ok(a), Ok(p)) => (a, p),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            return Err(a);
        }
        (Err(e), _) | (_, Err(e)) => return Err(e),
    };

    let krate = args
        .krate
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(::ivy));
    let p = quote!(#krate::__private);
    let vis = &func.vis;
    let fn_name = &func.sig.ident;
    let fn_name_str = fn_name.to_string();
    let fn_name_str = fn_name_str.strip_prefix("r#").unwrap_or(&fn_name_str);

    // The default name's helper constants live in the block of `NAME` itself, so they cannot
    // shadow an item the user's types refer to.
    let name = match &args.name {
        Some(lit) => quote!(#lit),
        None => quote! {{
            const PATH: &str = ::core::concat!(::core::module_path!(), "::", #fn_name_str);
            const LEN: usize = #p::dotted_len(PATH);
            const BYTES: [u8; LEN] = #p::dotted::<LEN>(PATH);
            #p::dotted_str(&BYTES)
        }},
    };

    let mut options = quote!(#p::TaskOptions::DEFAULT);
    if let Some(q) = &args.queue {
        options = quote!(#options.with_queue(#q));
    }
    if let Some(pr) = args.priority {
        options = quote!(#options.with_priority(#pr));
    }
    if args.blocking.is_some() {
        options = quote!(#options.with_blocking());
    }
    if let Some(n) = args.max_retries {
        options = quote!(#options.with_max_retries(#n));
    }
    if let Some((count, per_secs)) = args.rate_limit {
        options = quote!(#options.with_rate_limit(#count, #p::Duration::from_secs(#per_secs)));
    }
    if let Some(n) = args.max_concurrency {
        options = quote!(#options.with_max_concurrency(#n));
    }
    for (d, method) in [
        (&args.retry_backoff, "with_retry_backoff"),
        (&args.retry_backoff_max, "with_retry_backoff_max"),
        (&args.timeout, "with_timeout"),
    ] {
        if let Some(d) = d {
            let ms = u64::try_from(d.value.as_millis())
                .expect("parse_duration keeps durations within u64 milliseconds");
            let m = format_ident!("{}", method);
            options = quote!(#options.#m(#p::Duration::from_millis(#ms)));
        }
    }

    // Every local the generated code introduces is `mixed_site`: a user's parameter, type or
    // function can neither be shadowed by one of them nor shadow one.
    let local = |name: &str| Ident::new(name, Span::mixed_site());
    let args_map = local("__ivy_args");
    let ret = local("__ivy_ret");
    let ok = local("__ivy_ok");
    let err = local("__ivy_err");
    let failure = local("__ivy_failure");

    // The worker decodes into these rather than into the user's names, so a parameter named
    // like its function does not hide the function it is passed to. All parameters, in order:
    // the function is called with them.
    let decoded: Vec<Ident> = (0..params.len())
        .map(|i| local(&format!("__ivy_arg{i}")))
        .collect();
    // `State<T>` parameters are filled from the worker; the rest travel with the call.
    let states: Vec<(&Type, &Ident)> = params
        .iter()
        .zip(&decoded)
        .filter(|(p, _)| p.state)
        .map(|(p, var)| (p.ty, var))
        .collect();
    let (params, wire_vars): (Vec<_>, Vec<_>) = params
        .iter()
        .zip(&decoded)
        .filter(|(p, _)| !p.state)
        .unzip();
    let idents: Vec<&Ident> = params.iter().map(|p| p.ident).collect();
    let tys: Vec<&Type> = params.iter().map(|p| p.ty).collect();
    let names: Vec<String> = idents
        .iter()
        .map(|i| {
            let s = i.to_string();
            s.strip_prefix("r#").unwrap_or(&s).to_string()
        })
        .collect();
    // Each type is checked once, spanned at the type so that an unfit one is blamed where the
    // user wrote it; the codecs fall back to a stand-in for an unfit type (see
    // `codegen::ArgCodec`) so that its uses add no further errors.
    let arg_checks = tys.iter().map(|ty| {
        quote_spanned! {ty.span()=> #p::assert_task_arg::<#ty>(); }
    });
    let encodes: Vec<TokenStream> = params
        .iter()
        .zip(&names)
        .map(|(prm, name)| {
            let (ident, ty) = (prm.ident, prm.ty);
            quote! {
                (&#p::ArgCodec::<#ty>::NEW).ivy_encode_arg(&mut #args_map, #name, &#ident);
            }
        })
        .collect();
    // `with(..)`: a chain step or chord callback, every argument but the first, which is
    // filled by what comes before; its type is the step's `In`, so a chain whose types do not
    // match does not compile.
    let with_fn = match (params.first(), names.first()) {
        (Some(first), Some(first_name)) => {
            let first_ty = first.ty;
            let rest_idents = &idents[1..];
            let rest_tys = &tys[1..];
            let rest_encodes = &encodes[1..];
            let with_doc = format!(
                "A step of a chain or a chord's callback: a call of `{fn_name_str}` whose first argument, `{first_name}`, is filled by what comes before."
            );
            quote! {
                #[doc = #with_doc]
                #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)]
                #vis fn with(#(#rest_idents: #rest_tys),*) -> #p::Step<#fn_name, #first_ty> {
                    #[allow(unused_imports)]
                    use #p::{FitArg as _, UnfitArg as _};
                    #[allow(unused_mut)]
                    let mut #args_map = ::core::result::Result::Ok(#p::Map::new());
                    #(#rest_encodes)*
                    #p::Step::__new(#first_name, #args_map)
                }
            }
        }
        _ => quote!(),
    };
    let decodes = params
        .iter()
        .zip(&names)
        .zip(&wire_vars)
        .map(|((prm, name), var)| {
            let ty = prm.ty;
            quote! {
                let #var: #ty = (&#p::ArgCodec::<#ty>::NEW).ivy_decode_arg(&mut #args_map, #name)?;
            }
        });
    // Spanned at the type, so a `State` that is not Ivy's is blamed where it was written.
    let injects = states.iter().map(|(ty, var)| {
        quote_spanned! {ty.span()=>
            let #var: #ty = <#ty as #p::FromWorker>::from_worker(<#fn_name as #p::Task>::NAME)?;
        }
    });

    // `Output` is declared through `CheckedOutput`, which is the check of the result type: one
    // error, spanned at the type that travels (the `T` of `Result<T, E>` when it is spelled out).
    let (output_ty, is_result) = match &func.sig.output {
        ReturnType::Default => (quote!(()), false),
        ReturnType::Type(_, ty) if returns_result(ty) => {
            let span = result_ok_type(ty).unwrap_or(ty).span();
            (quote_spanned!(span=> <#ty as #p::TaskReturn>::Ok), true)
        }
        ReturnType::Type(_, ty) => (quote!(#ty), false),
    };
    // The whole item carries the span: rustc reports the bounds of `Task::Output` at the item.
    let output_item = match &func.sig.output {
        ReturnType::Default => quote!(
            type Output = ();
        ),
        ReturnType::Type(_, ty) => {
            let span = result_ok_type(ty)
                .filter(|_| is_result)
                .unwrap_or(ty)
                .span();
            quote_spanned!(span=> type Output = <#output_ty as #p::CheckedOutput>::Type;)
        }
    };

    let invoke = if args.blocking.is_some() {
        quote! {
            #p::spawn_blocking_in_context(move || #fn_name(#(#decoded),*))
                .await
                .map_err(#p::join_failure)?
        }
    } else {
        quote!(#fn_name(#(#decoded),*).await)
    };
    let encode_ok =
        |value: &Ident| quote!((&#p::OutputCodec::<#output_ty>::NEW).ivy_encode_output(#value));
    // `no_retry_on = path`: the user's `fn(&E) -> bool` marks a failure permanent. Spanned at
    // the path, so a function of the wrong type is blamed there.
    let mark_permanent = args.no_retry_on.as_ref().map(|path| {
        quote_spanned! {path.span()=>
            if #path(&#err) {
                #failure = #failure.with_permanent(true);
            }
        }
    });
    if let (Some(path), false) = (&args.no_retry_on, is_result) {
        return Err(syn::Error::new(
            path.span(),
            "`no_retry_on` needs a task that returns `Result<T, E>`: it is given each error `&E`",
        ));
    }
    // An error type without `Display` is one error, at the type, naming the trait.
    let check_error = match &func.sig.output {
        ReturnType::Type(_, ty) if is_result => {
            let span = result_err_type(ty).unwrap_or(ty).span();
            quote_spanned!(span=> #p::checked_error(&#err);)
        }
        _ => quote!(),
    };
    let finish = if is_result {
        let encode = encode_ok(&ok);
        quote! {
            match #p::TaskReturn::into_result(#ret) {
                ::core::result::Result::Ok(#ok) => #encode,
                ::core::result::Result::Err(#err) => {
                    #[allow(unused_imports)]
                    use #p::{ViaAsRefError as _, ViaDisplay as _, ViaError as _, ViaUnfit as _};
                    #check_error
                    // The borrows choose the richest description of the error type.
                    #[allow(clippy::needless_borrow, unused_mut)]
                    let mut #failure = (&&#p::ErrWrap(&#err)).ivy_failure();
                    #mark_permanent
                    ::core::result::Result::Err(#failure)
                }
            }
        }
    } else {
        encode_ok(&ret)
    };

    let doc = format!(
        "Delayed calls of the task [`{fn_name_str}`](fn@{fn_name_str}): `{fn_name_str}::call(..)` builds a call for `Producer::delayed_call`."
    );
    let call_doc =
        format!("A call of `{fn_name_str}` with these arguments, to give to a producer.");

    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #vis struct #fn_name {
            _private: (),
        }

        impl #fn_name {
            #[doc = #call_doc]
            #[allow(clippy::too_many_arguments, clippy::needless_pass_by_value)]
            #vis fn call(#(#idents: #tys),*) -> #p::Call<#fn_name> {
                #[allow(unused_imports)]
                use #p::{FitArg as _, UnfitArg as _};
                #[allow(unused_mut)]
                let mut #args_map = ::core::result::Result::Ok(#p::Map::new());
                #(#encodes)*
                #p::Call::__new(#args_map)
            }

            #with_fn
        }

        const _: () = {
            const _: () = {
                #(#arg_checks)*
            };

            impl #p::Task for #fn_name {
                const NAME: &'static str = #name;
                const OPTIONS: #p::TaskOptions = #options;
                #output_item

                #[allow(unused_mut)]
                fn run(
                    mut #args_map: #p::Map<::std::string::String, #p::Value>,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#p::Value, #p::TaskFailure>,
                > + ::core::marker::Send {
                    #[allow(unused_imports)]
                    use #p::{FitArg as _, FitOutput as _, UnfitArg as _, UnfitOutput as _};
                    async move {
                        #(#decodes)*
                        #p::no_extra_args(&#args_map)?;
                        #(#injects)*
                        let #ret = #invoke;
                        #finish
                    }
                }
            }

            #p::inventory::submit! { #p::TaskEntry::of::<#fn_name>() }
        };
    })
}

/// The `T` of a return type spelled `Result<T, ..>`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Path(tp) => match &tp.path.segments.last()?.arguments {
            syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            }),
            _ => None,
        },
        Type::Group(g) => result_ok_type(&g.elem),
        Type::Paren(p) => result_ok_type(&p.elem),
        _ => None,
    }
}

/// The `E` of a return type spelled `Result<T, E>`.
fn result_err_type(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Path(tp) => match &tp.path.segments.last()?.arguments {
            syn::PathArguments::AngleBracketed(a) => a
                .args
                .iter()
                .filter_map(|arg| match arg {
                    syn::GenericArgument::Type(t) => Some(t),
                    _ => None,
                })
                .nth(1),
            _ => None,
        },
        Type::Group(g) => result_err_type(&g.elem),
        Type::Paren(p) => result_err_type(&p.elem),
        _ => None,
    }
}

/// Whether the return type is spelled `Result<..>` (std's, `anyhow::Result`, `io::Result`...).
fn returns_result(ty: &Type) -> bool {
    match ty {
        Type::Path(tp) => tp.path.segments.last().is_some_and(|s| s.ident == "Result"),
        Type::Group(g) => returns_result(&g.elem),
        Type::Paren(p) => returns_result(&p.elem),
        _ => false,
    }
}
